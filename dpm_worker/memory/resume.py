"""The state of a conversation's labeling, taken mid-way and given back to continue exactly.

An hour-long conversation on a spot GPU may lose its actor at utterance 900; the temporary LoRA
is the conversation's state, so the labeler can hand out a :class:`ConversationState` (the
position, the history tail the next read needs, the speaker slots, every written memory slot's
adapter values and optimizer state, the RNG, and the rows already labeled) and continue from
one later. Storing it is the caller's business (``dpm_worker.tables.CheckpointStore``): this
package does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dpm_worker.errors import ConfigError
from dpm_worker.memory.lora import TemporaryLoraMemory

RNG_KEY = "rng.torch"


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
        tensors: the memory's state (:meth:`TemporaryLoraMemory.state_dict`, one group of
            tensors per written slot, i.e. per speaker under speaker scope) and the torch RNG
            state (``rng.torch``).
    """

    position: int
    speaker_slots: dict[str, int]
    history: list[int]
    probs: np.ndarray
    ms: list[float]
    context_tokens: list[int]
    tensors: dict[str, torch.Tensor]


def capture_state(
    memory: TemporaryLoraMemory | None,
    probs: np.ndarray,
    ms: list[float],
    context_tokens: list[int],
    speaker_slots: dict[str, int],
    history: list[int],
) -> ConversationState:
    """A copy of the state (the memory's tensors copied to the CPU; nothing shared)."""
    tensors = memory.state_dict() if memory is not None else {}
    # No step draws random numbers today (dropout is off); the RNG is kept anyway (5 KB) so
    # that a future sampling step resumes exactly too.
    tensors[RNG_KEY] = torch.get_rng_state()
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
    state: ConversationState,
    memory: TemporaryLoraMemory | None,
    n_utterances: int,
    n_labels: int,
) -> None:
    """Load ``state``'s memory and RNG (slots, history and rows are the labeler's).

    Raises:
        ConfigError: the state does not fit this conversation, label set or mode.
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
    if memory is not None:
        memory.load_state_dict(tensors)
    elif tensors:
        raise ConfigError("resume state has memory tensors but the labeler has no memory")
    if rng is not None:
        torch.set_rng_state(rng)
