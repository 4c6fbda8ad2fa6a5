"""The labeling engine: K conversation slots, one utterance of each per batched DPM step.

:class:`SlotEngine` holds what every conversation slot shares (the backbone with the batched
memory's layers, the step strategy of the mode and write target, the history cache) and walks
one conversation's utterances: :meth:`SlotEngine.next_row` builds the step row of its next
utterance (history window + tokens, the memory slot of its speaker, the write's targets),
:meth:`SlotEngine.remember` takes the utterance into its history. Its driver is
:class:`~dpm_worker.memory.slots.SlotLabeler` (conversations admitted and released one at a
time, continuous batching); the memory-loop trainer walks one conversation with these same
methods and the same step. A conversation's rows do not depend on what else is in the batch:
its memory lives only in its own slots and every batch row computes only from its own tokens
(tested against the one-conversation reference in ``tests/oracle`` to 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from dpm_worker.model import EmotionModel

from dpm_worker.errors import ConfigError, LabelError
from dpm_worker.memory.batched import BatchedLoraMemory
from dpm_worker.memory.cache import HistoryCache
from dpm_worker.memory.config import LabelingConfig
from dpm_worker.memory.step import PriorWrite, StepRow, strategy_for
from dpm_worker.model import IGNORE, fit_context, history_budget, tail
from dpm_worker.utterance import Utterance


@dataclass
class ActiveConversation:
    """A conversation in a slot: its utterances (or their chunks), where it is, its history
    (:meth:`SlotEngine.begin` makes one; ``next_row`` and ``remember`` walk it)."""

    utterances: Sequence[Utterance]
    position: int = 0
    speakers: dict[str, int] = field(default_factory=dict)
    history: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # history tokens not yet in the cache


class SlotEngine:
    """The batched DPM step of up to ``slots`` conversations with one backbone in one mode.

    Args:
        model: the emotion SLLM; in ``dpm`` mode its causal LM gets the batched memory's
            layers wrapped in once, here (the model must not carry the peft memory as well).
        config: the labeling configuration (its ``history_cache`` included).
        slots: K, the most conversations labeled at once.
        memory_class: the batched memory to build in ``dpm`` mode (the memory-loop trainer's
            order 2 passes one whose writes keep the graph).
    """

    def __init__(
        self,
        model: EmotionModel,
        config: LabelingConfig,
        slots: int,
        memory_class: type[BatchedLoraMemory] = BatchedLoraMemory,
    ) -> None:
        if slots < 1:
            raise ConfigError(f"slots must be >= 1, got {slots}")
        self.model, self.config, self.slots = model, config, slots
        self.vocab = model.vocab
        self.history_labels = config.history_labels or getattr(model, "history_labels", "none")
        if config.memory.write_target == "audio+emotion" and self.history_labels != "predicted":
            raise ConfigError(
                "memory.write_target 'audio+emotion' needs history_labels 'predicted', "
                f"got {self.history_labels!r}"
            )
        self.max_context = int(model.max_context)
        # Speaker scope: one memory slot per (conversation slot, speaker slot).
        self.per_conversation = self.vocab.n_speakers if config.memory.scope == "speaker" else 1
        self.memory = (
            memory_class(model.model, config.memory, slots * self.per_conversation)
            if config.mode == "dpm"
            else None
        )
        self.step = strategy_for(
            config.mode, model.model, self.vocab.emotion_ids, self.memory, config.memory
        )
        self.keep = history_budget(config.mode, config.window_tokens, self.max_context)
        # Reuse where the long pass runs with the memory off (dpm_worker.memory.cache).
        memory_off_read = config.mode in ("window", "full") or (
            config.mode == "dpm"
            and config.memory.write_target == "prior"
            and config.memory.prior_input == "speaker"
        )
        if config.history_cache == "reuse" and memory_off_read:
            self.step.cache = HistoryCache(model.model, self.keep)

    def close(self) -> None:
        """Put the backbone's layers back (only needed to reuse the model otherwise)."""
        if self.memory is not None:
            self.memory.close()

    # -- one conversation's steps (its driver: SlotLabeler; the memory-loop trainer) ----------

    def begin(self, slot: int, utterances: Sequence[Utterance]) -> ActiveConversation:
        """A conversation (``utterances``, in dialogue order) starts in slot ``slot``."""
        if self.step.cache is not None:
            self.step.cache.drop(slot)
        # A memory slot is reset when its speaker first speaks (next_row): most conversations use
        # two of the vocabulary's speaker slots, and a reset rewrites every adapted layer.
        return ActiveConversation(utterances)

    def finish(self, slot: int) -> None:
        """Slot ``slot``'s conversation ended: drop what is kept for it."""
        if self.step.cache is not None:
            self.step.cache.drop(slot)
        if isinstance(self.step, PriorWrite):
            for speaker in range(self.vocab.n_speakers):
                self.step.forget((slot, speaker))

    def next_row(self, slot: int, conv: ActiveConversation) -> tuple[StepRow, list[int]]:
        """The step row of ``conv``'s next utterance and the utterance's own tokens."""
        utt = conv.utterances[conv.position]
        speaker = conv.speakers.get(utt.speaker, len(conv.speakers))
        memory_speaker = speaker if self.config.memory.scope == "speaker" else 0
        if self.memory is not None and (
            utt.speaker not in conv.speakers and memory_speaker == speaker
        ):
            # first turn of this memory slot in this conversation: its initial adapter
            self.memory.reset(slot * self.per_conversation + memory_speaker, memory_speaker)
        conv.speakers.setdefault(utt.speaker, speaker)
        try:
            tokens = self.vocab.utterance_tokens(utt.codes(), speaker)
        except ConfigError as exc:
            raise LabelError(f"utterance {utt.utterance_index}: {exc}") from exc
        if len(tokens) < 3:
            raise LabelError(f"utterance {utt.utterance_index} has no audio tokens")
        ids, start = fit_context(tail(conv.history, self.keep), tokens, self.max_context)
        # only the audio writes train on token labels (``prior`` writes at the speaker token)
        labelled = self.memory is not None and self.config.memory.write_target != "prior"
        return (
            StepRow(
                ids=ids,
                start_of_utt=start,
                slot=slot * self.per_conversation + memory_speaker,
                speaker=(slot, speaker),
                labels=self._labels(ids, start) if labelled else None,
                conversation=slot,
                new_ids=[*conv.pending, *tokens],
                head=self._head(utt),
            ),
            tokens,
        )

    def _head(self, utt: Utterance) -> torch.Tensor | None:
        """The acoustic head's weighted log-probabilities for ``utt`` (None without a head)."""
        head = self.model.acoustic_head
        if head is None or utt.acoustic is None:
            return None
        return torch.from_numpy(head.weight * head.log_probs(utt.acoustic)[0]).float()

    def _labels(self, ids: list[int], start: int) -> list[int]:
        """Write targets: the utterance's audio tokens (+ the history's emotion tokens)."""
        lo, hi = self.vocab.audio_offset, self.vocab.audio_offset + self.vocab.n_audio
        elo, ehi = self.vocab.emotion_offset, self.vocab.size
        emotion = self.config.memory.write_target == "audio+emotion"
        out = []
        for pos, tok in enumerate(ids):
            on = pos >= start and lo <= tok < hi
            on |= emotion and pos < start and elo <= tok < ehi
            out.append(tok if on and pos >= 1 else IGNORE)
        return out

    def remember(self, conv: ActiveConversation, tokens: list[int], label: str) -> None:
        """Append an utterance's tokens (and its predicted label, if the history has them) to
        the history; the step's read already cached them. History beyond what the mode reads
        is dropped, so the memory per utterance stays constant."""
        history, keep = conv.history, self.keep
        history.extend(tokens)
        conv.pending = []
        if self.history_labels == "predicted":
            history.append(self.vocab.emotion_token(label))
            conv.pending.append(history[-1])
        if len(history) > 2 * keep:
            del history[: len(history) - keep]
