"""The state of a conversation's labeling, taken mid-way and given back to continue exactly.

An hour-long conversation on a spot GPU may lose its actor at utterance 900; the temporary LoRA
is the conversation's state, so the labeler hands out a :class:`ConversationState` (the
position, the history tail the next read needs, the speaker slots, every written memory slot's
adapter values and optimizer state, the RNG, and the rows already labeled) and continues from
one later. :meth:`ConversationState.to_tensors` turns it into plain named tensors and a JSON
header, :meth:`ConversationState.from_tensors` back; storing them is the caller's business
(``dpm_worker.tables.CheckpointStore`` stores any such pair): this package does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dpm_worker.errors import ConfigError

RNG_KEY = "rng.torch"
# Tensor names of the rows and history (the memory's are ``slot.*``, the averages ``ema.*``).
_PROBS, _MS, _CONTEXT, _HISTORY = "rows.probs", "rows.ms", "rows.context_tokens", "history"


@dataclass
class ConversationState:
    """Where the labeling of one conversation stands: everything needed to continue exactly.

    Label and confidence of a labeled row are not kept: they follow from its probabilities
    (the argmax and its value).

    Args:
        position: utterances labeled so far (the next one's position in the conversation).
        speaker_slots: speaker name -> speaker slot, in order of first appearance.
        history: the history tokens the next read needs (already cut to what the mode keeps).
        probs: ``[position, n_labels]`` float32, the labeled rows' probabilities.
        ms: the labeled rows' wall times.
        context_tokens: the labeled rows' input lengths.
        tensors: every written memory slot's tensors (``slot.<k>.<field>``, one group per
            speaker under speaker scope; ``BatchedLoraMemory.export_slot``'s fields), the
            ``prior-ema`` averages (``ema.<speaker slot>``) and the torch RNG (``rng.torch``).
    """

    position: int
    speaker_slots: dict[str, int]
    history: list[int]
    probs: np.ndarray
    ms: list[float]
    context_tokens: list[int]
    tensors: dict[str, torch.Tensor]

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Plain named CPU tensors and a JSON-able header that :meth:`from_tensors` takes back."""
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.tensors.items()}
        tensors[_PROBS] = torch.from_numpy(np.ascontiguousarray(self.probs, dtype=np.float32))
        tensors[_MS] = torch.tensor(self.ms, dtype=torch.float64)
        tensors[_CONTEXT] = torch.tensor(self.context_tokens, dtype=torch.int64)
        tensors[_HISTORY] = torch.tensor(self.history, dtype=torch.int64)
        header = {"position": self.position, "speaker_slots": dict(self.speaker_slots)}
        return tensors, header

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], header: dict[str, Any]
    ) -> ConversationState:
        """The state :meth:`to_tensors` gave these tensors and header for.

        Raises:
            ConfigError: a field is missing or the rows do not match the position.
        """
        rest = dict(tensors)
        try:
            probs = rest.pop(_PROBS).numpy()
            state = cls(
                position=int(header["position"]),
                speaker_slots={str(k): int(v) for k, v in header["speaker_slots"].items()},
                history=[int(t) for t in rest.pop(_HISTORY).tolist()],
                probs=probs,
                ms=[float(x) for x in rest.pop(_MS).tolist()],
                context_tokens=[int(x) for x in rest.pop(_CONTEXT).tolist()],
                tensors=rest,
            )
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a conversation state: missing or bad field {exc}") from exc
        if probs.ndim != 2 or probs.shape[0] != state.position:
            raise ConfigError(
                f"conversation state at position {state.position} has rows of shape "
                f"{tuple(probs.shape)}"
            )
        return state


def capture_state(
    probs: np.ndarray,
    ms: list[float],
    context_tokens: list[int],
    speaker_slots: dict[str, int],
    history: list[int],
    tensors: dict[str, torch.Tensor],
) -> ConversationState:
    """A copy of the state (``tensors``: the memory's and averages', CPU copies) and the RNG."""
    # No step draws random numbers today (dropout is off); the RNG is kept anyway (5 KB) so
    # that a future sampling step resumes exactly too.
    tensors = {**tensors, RNG_KEY: torch.get_rng_state()}
    return ConversationState(
        position=len(probs),
        speaker_slots=dict(speaker_slots),
        history=list(history),
        probs=np.asarray(probs, dtype=np.float32),
        ms=list(ms),
        context_tokens=list(context_tokens),
        tensors=tensors,
    )


def restore_state(
    state: ConversationState, n_utterances: int, n_labels: int
) -> dict[str, torch.Tensor]:
    """Check that ``state`` fits the conversation and label set and restore its RNG.

    Returns:
        Its other tensors (the memory's and averages', for the labeler to load).

    Raises:
        ConfigError: the state does not fit this conversation or label set.
    """
    if not 0 <= state.position <= n_utterances or state.probs.shape != (state.position, n_labels):
        raise ConfigError(
            f"resume state at position {state.position} with probs {tuple(state.probs.shape)} "
            f"does not fit a conversation of {n_utterances} utterances and {n_labels} labels"
        )
    if not len(state.ms) == len(state.context_tokens) == state.position:
        raise ConfigError(f"resume state at position {state.position} has rows of other lengths")
    tensors = dict(state.tensors)
    rng = tensors.pop(RNG_KEY, None)
    if rng is not None:
        torch.set_rng_state(rng)
    return tensors
