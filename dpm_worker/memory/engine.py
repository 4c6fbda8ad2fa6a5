"""Label many conversations at once: K slots, one utterance of each per batched DPM step.

Continuous batching: up to ``slots`` conversations are active; every step takes the next
utterance of each (ordering within a conversation stays strict), runs one batched
:func:`~dpm_worker.memory.step.dpm_step`, and a conversation that has no utterance left is
handed back at once and the next waiting conversation takes its slot (its memory slots reset),
so a long conversation never holds the others back. Each conversation's rows are those it gets
alone with :class:`~dpm_worker.memory.labeling.ConversationLabeler` (tested to 1e-5): its
memory lives only in its own slots and every batch row computes only from its own tokens.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dpm_worker.model import EmotionModel

from dpm_worker.errors import ConfigError, LabelError
from dpm_worker.memory.batched import BatchedLoraMemory
from dpm_worker.memory.cache import HistoryCache
from dpm_worker.memory.config import HISTORY_CACHES, LabelingConfig
from dpm_worker.memory.step import PriorWrite, StepRow, dpm_step, strategy_for
from dpm_worker.model import IGNORE, fit_context, history_budget, tail
from dpm_worker.utterance import LabeledUtterance, Utterance


@dataclass
class ActiveConversation:
    """A conversation in a slot: its utterances, where it is, its history and its rows
    (:meth:`BatchedLabeler.begin` makes one; ``next_row`` and ``remember`` walk it)."""

    index: int
    utterances: Sequence[Utterance]
    position: int = 0
    speakers: dict[str, int] = field(default_factory=dict)
    history: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # history tokens not yet in the cache
    predictions: list[LabeledUtterance] = field(default_factory=list)


class BatchedLabeler:
    """Labels conversations ``slots`` at a time with one backbone in one mode.

    Args:
        model: the emotion SLLM; in ``dpm`` mode its causal LM gets the batched memory's
            layers wrapped in once, here (the model must not carry the peft memory as well).
        config: the labeling configuration (as for ``ConversationLabeler``).
        slots: K, the most conversations labeled at once.
        history_cache: ``recompute`` or ``reuse`` (default: ``config.history_cache``).
        memory_class: the batched memory to build in ``dpm`` mode (the memory-loop trainer's
            order 2 passes one whose writes keep the graph).
    """

    def __init__(
        self,
        model: EmotionModel,
        config: LabelingConfig,
        slots: int,
        history_cache: str | None = None,
        memory_class: type[BatchedLoraMemory] = BatchedLoraMemory,
    ) -> None:
        history_cache = history_cache or config.history_cache
        if slots < 1:
            raise ConfigError(f"slots must be >= 1, got {slots}")
        if history_cache not in HISTORY_CACHES:
            raise ConfigError(
                f"history_cache must be one of {HISTORY_CACHES}, got {history_cache!r}"
            )
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
        if history_cache == "reuse" and memory_off_read:
            self.step.cache = HistoryCache(model.model, self.keep)
        self.steps_run = 0  # batched steps so far (benchmarks: time per step)

    def close(self) -> None:
        """Put the backbone's layers back (only needed to reuse the model otherwise)."""
        if self.memory is not None:
            self.memory.close()

    def label_conversations(
        self, conversations: Iterable[Sequence[Utterance]]
    ) -> Iterator[tuple[int, list[LabeledUtterance]]]:
        """Label conversations (each in dialogue order), yielding ``(input index, rows)`` as
        each one ends; the order of the yields is the order in which conversations finish."""
        waiting = iter(enumerate(conversations))
        active: dict[int, ActiveConversation] = {}
        exhausted = False
        while True:
            while not exhausted and len(active) < self.slots:
                nxt = next(waiting, None)
                if nxt is None:
                    exhausted = True
                    break
                slot = min(set(range(self.slots)) - set(active))
                active[slot] = self.begin(slot, *nxt)
            done = [s for s, conv in active.items() if conv.position >= len(conv.utterances)]
            for slot in done:
                conv = active.pop(slot)
                self.finish(slot)
                yield conv.index, conv.predictions
            if done:
                continue  # refill the freed slots before the next step
            if not active:
                return
            self._advance(active)

    # -- one conversation's steps (also driven from outside: SlotLabeler, the memory loop) -------

    def begin(self, slot: int, index: int, utterances: Sequence[Utterance]) -> ActiveConversation:
        """Conversation ``index`` (``utterances``) starts in slot ``slot``."""
        if self.step.cache is not None:
            self.step.cache.drop(slot)
        # A memory slot is reset when its speaker first speaks (next_row): most conversations use
        # two of the vocabulary's speaker slots, and a reset rewrites every adapted layer.
        return ActiveConversation(index, utterances)

    def finish(self, slot: int) -> None:
        """Slot ``slot``'s conversation ended: drop what is kept for it."""
        if self.step.cache is not None:
            self.step.cache.drop(slot)
        if isinstance(self.step, PriorWrite):
            for speaker in range(self.vocab.n_speakers):
                self.step.forget((slot, speaker))

    def _advance(self, active: dict[int, ActiveConversation]) -> None:
        """One batched step: the next utterance of every active conversation."""
        start = time.perf_counter()
        self.steps_run += 1
        rows, tokens = [], []
        for slot, conv in active.items():
            row, toks = self.next_row(slot, conv)
            rows.append(row)
            tokens.append(toks)
        probs = dpm_step(self.step, rows).float().cpu().numpy()
        ms = (time.perf_counter() - start) * 1000.0 / len(rows)
        for (_, conv), row, toks, p in zip(active.items(), rows, tokens, probs, strict=True):
            utt = conv.utterances[conv.position]
            best = int(np.argmax(p))
            label = self.vocab.labels[best]
            self.remember(conv, toks, label)
            conv.predictions.append(
                LabeledUtterance(
                    utterance=utt,
                    emotion=label,
                    confidence=float(p[best]),
                    probs=p.astype(np.float32),
                    ms=ms,
                    context_tokens=len(row.ids),
                )
            )
            conv.position += 1

    def next_row(self, slot: int, conv: ActiveConversation) -> tuple[StepRow, list[int]]:
        """The step row of ``conv``'s next utterance (``ConversationLabeler.prepare``'s input)."""
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
            ),
            tokens,
        )

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
        """``ConversationLabeler.remember``; the step's read already cached ``tokens``."""
        history, keep = conv.history, self.keep
        history.extend(tokens)
        conv.pending = []
        if self.history_labels == "predicted":
            history.append(self.vocab.emotion_token(label))
            conv.pending.append(history[-1])
        if len(history) > 2 * keep:
            del history[: len(history) - keep]
