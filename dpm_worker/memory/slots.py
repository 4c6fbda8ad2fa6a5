"""The labeling engine's driver: conversations admitted and released one at a time, every
utterance step batched across them.

A worker that receives conversations one by one (a Ray actor whose calls arrive while others
run) puts a conversation into a free slot with :meth:`SlotLabeler.admit` (optionally resuming
it from a :class:`ConversationState`), advances every admitted conversation by one model read
in one batched DPM step with :meth:`SlotLabeler.advance`, and takes a finished one out with
:meth:`SlotLabeler.release` so the next can take its slot at once; :meth:`export_state` gives a
conversation's state between utterances. :func:`label_batched` drives it for "these
conversations, all their rows" (evaluation, benchmarks). Each conversation's rows are those it
gets alone, whatever shares the batch (tested against the reference in ``tests/oracle``):

- an utterance longer than the context is read in chunks (``long_utterances``), one chunk per
  step, each chunk entering the history with its own read, the utterance's distribution their
  length-weighted mean (:mod:`dpm_worker.memory.rows`);
- ``prior-ema``'s running averages are kept per conversation and speaker;
- a model's acoustic head (``dpm_worker.model.acoustic_head``) is fused into every read of
  an utterance (each chunk's) by the step, so ``prior-ema`` averages fused reads;
- a state holds the conversation's memory slots (``BatchedLoraMemory.export_slot``'s fields
  under ``slot.<k>.``), so a checkpoint taken in one batch resumes in any other.

DEBUG: one line per utterance labeled (``dpm bench faults`` counts them to measure the work a
killed actor loses: the lines of a process that was killed survive in its log).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from dpm_worker.model import EmotionModel

from dpm_worker.errors import BadInputError, ConfigError
from dpm_worker.memory.batched import BatchedLoraMemory
from dpm_worker.memory.config import LabelingConfig
from dpm_worker.memory.engine import ActiveConversation, SlotEngine
from dpm_worker.memory.resume import ConversationState, capture_state, restore_state
from dpm_worker.memory.rows import ema_read, labeled_row, utterance_parts
from dpm_worker.memory.step import dpm_step
from dpm_worker.utterance import LabeledUtterance, Utterance

log = logging.getLogger(__name__)


@dataclass
class _Conversation:
    """A conversation in a slot. ``active`` walks its parts (an utterance, or its chunks)."""

    key: Hashable
    utterances: list[Utterance]
    owner: list[int]  # part -> the utterance it belongs to
    active: ActiveConversation
    rows: list[LabeledUtterance] = field(default_factory=list)
    total: np.ndarray | None = None  # the current utterance's weighted reads so far
    ms: float = 0.0
    ema: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return len(self.rows) == len(self.utterances)

    @property
    def between_utterances(self) -> bool:
        return self.total is None


class SlotLabeler(SlotEngine):
    """Up to ``slots`` conversations labeled together, admitted and released one at a time.

    Args:
        model: the emotion SLLM (its backbone gets the batched memory's layers, see
            ``SlotEngine``).
        config: the labeling configuration (``history_cache`` included).
        slots: the most conversations held at once (1: one at a time, the same rows).
        memory_class: the batched memory in ``dpm`` mode (see ``SlotEngine``).
    """

    def __init__(
        self,
        model: EmotionModel,
        config: LabelingConfig,
        slots: int,
        memory_class: type[BatchedLoraMemory] = BatchedLoraMemory,
    ) -> None:
        super().__init__(model, config, slots, memory_class)
        self._slots: dict[int, _Conversation] = {}
        self._where: dict[Hashable, int] = {}

    # -- admission ------------------------------------------------------------------------------

    @property
    def free(self) -> int:
        """Slots without a conversation."""
        return self.slots - len(self._slots)

    @property
    def keys(self) -> list[Hashable]:
        """The conversations held, in slot order."""
        return [self._slots[s].key for s in sorted(self._slots)]

    def admit(
        self,
        key: Hashable,
        utterances: Sequence[Utterance],
        resume: ConversationState | None = None,
    ) -> None:
        """Put a conversation (tokenized utterances in dialogue order) into a free slot.

        Args:
            key: the conversation's name in this labeler (unique among those held).
            utterances: the whole conversation.
            resume: a state exported from an interrupted labeling of the same conversation
                with the same model and config; labeling goes on from its position.

        Raises:
            ConfigError: no slot is free, ``key`` is held already, or ``resume`` does not fit.
        """
        if key in self._where:
            raise ConfigError(f"conversation {key!r} is already in slot {self._where[key]}")
        if not self.free:
            raise ConfigError(f"all {self.slots} slots are taken")
        slot = min(set(range(self.slots)) - set(self._slots))
        utts = list(utterances)
        if self.model.acoustic_head is not None and any(u.acoustic is None for u in utts):
            raise ConfigError(
                f"conversation {key!r}: the model has an acoustic head but utterances were "
                "tokenized without acoustic summaries (tokenize with the model's tokenizer)"
            )
        parts: list[Utterance] = []
        owner: list[int] = []
        for n, utt in enumerate(utts):
            pieces = self._parts(utt)
            whole = len(pieces) == 1
            parts.extend(utt if whole else dataclasses.replace(utt, audio_ids=p) for p in pieces)
            owner.extend([n] * len(pieces))
        conv = _Conversation(key, utts, owner, self.begin(slot, parts))
        if resume is not None:
            try:
                self._restore(slot, conv, resume)
            except ConfigError:
                self.finish(slot)
                raise
        self._slots[slot] = conv
        self._where[key] = slot

    def release(self, key: Hashable) -> list[LabeledUtterance]:
        """Take a conversation out (finished or not) and free its slot; its rows so far."""
        slot = self._where.pop(key)
        conv = self._slots.pop(slot)
        self.finish(slot)
        return conv.rows

    # -- labeling -------------------------------------------------------------------------------

    def advance(self) -> tuple[list[Hashable], dict[Hashable, BadInputError]]:
        """One batched model read of every held conversation's next utterance (or chunk).

        Returns:
            The conversations that finished an utterance in this step, and those whose next
            utterance cannot be labeled (e.g. no audio tokens) with the error: those are not
            advanced and should be released.
        """
        start = time.perf_counter()
        slots, rows, tokens = [], [], []
        failed: dict[Hashable, BadInputError] = {}
        for slot in sorted(self._slots):
            conv = self._slots[slot]
            if conv.finished:
                continue
            try:
                row, toks = self.next_row(slot, conv.active)
            except BadInputError as exc:
                failed[conv.key] = exc
                continue
            slots.append(slot)
            rows.append(row)
            tokens.append(toks)
        if not rows:
            return [], failed
        probs = dpm_step(self.step, rows).float().cpu().numpy()
        ms = (time.perf_counter() - start) * 1000.0 / len(rows)
        done = []
        for slot, row, toks, p in zip(slots, rows, tokens, probs, strict=True):
            conv = self._slots[slot]
            if self.config.mode == "prior-ema":
                speaker = conv.active.speakers[conv.active.utterances[conv.active.position].speaker]
                p = ema_read(conv.ema, speaker, torch.from_numpy(p), self.config).numpy()
            if self._advance_one(conv, row.ids, toks, p, ms):
                done.append(conv.key)
                log.debug(
                    "conversation %r: utterance %d of %d labeled",
                    conv.utterances[0].conversation_id,
                    len(conv.rows),
                    len(conv.utterances),
                )
        return done, failed

    def position(self, key: Hashable) -> int:
        """Utterances of ``key`` labeled so far."""
        return len(self._slots[self._where[key]].rows)

    def finished(self, key: Hashable) -> bool:
        """Every utterance of ``key`` is labeled."""
        return self._slots[self._where[key]].finished

    def between_utterances(self, key: Hashable) -> bool:
        """``key`` is not in the middle of a chunked utterance (a state can be taken)."""
        return self._slots[self._where[key]].between_utterances

    def export_state(self, key: Hashable) -> ConversationState:
        """A copy of ``key``'s state (see ``ConversationState``), between utterances only.

        Raises:
            ConfigError: ``key`` is in the middle of a chunked utterance.
        """
        slot = self._where[key]
        conv = self._slots[slot]
        if not conv.between_utterances:
            raise ConfigError(f"conversation {key!r} is in the middle of an utterance")
        probs = np.array([r.probs for r in conv.rows], dtype=np.float32)
        probs = probs.reshape(len(conv.rows), len(self.vocab.labels))
        tensors: dict[str, torch.Tensor] = {}
        if self.memory is not None:
            for k in range(self.per_conversation):
                fields = self.memory.export_slot(slot * self.per_conversation + k)
                if int(fields["steps"]) == 0:
                    continue  # never written: equal to its initial value
                tensors.update({f"slot.{k}.{name}": t for name, t in fields.items()})
        tensors.update({f"ema.{k}": v.detach().cpu().clone() for k, v in conv.ema.items()})
        return capture_state(
            probs,
            [r.ms for r in conv.rows],
            [r.context_tokens for r in conv.rows],
            conv.active.speakers,
            conv.active.history,
            tensors,
        )

    # -- internals ------------------------------------------------------------------------------

    def _parts(self, utt: Utterance) -> list[np.ndarray]:
        return utterance_parts(utt.codes(), self.max_context, self.config.long_utterances)

    def _advance_one(
        self, conv: _Conversation, ids: list[int], tokens: list[int], p: np.ndarray, ms: float
    ) -> bool:
        """Take one part's read into ``conv``; True when it completed an utterance."""
        active = conv.active
        part = active.utterances[active.position]
        utt = conv.utterances[conv.owner[active.position]]
        # Each part enters the history (and memory) as a turn with its own read.
        self.remember(active, tokens, self.vocab.labels[int(np.argmax(p))])
        active.position += 1
        n_codes = len(utt.codes())
        weight = len(part.codes()) / n_codes if n_codes else 1.0
        total = np.zeros(len(p), dtype=np.float64) if conv.total is None else conv.total
        conv.total = total + p * weight
        conv.ms += ms
        if (
            active.position < len(conv.owner)
            and conv.owner[active.position] == conv.owner[active.position - 1]
        ):
            return False
        probs = conv.total.astype(np.float32)
        conv.total = None
        best = int(np.argmax(probs))
        calibration = self.model.calibration
        if calibration is not None:
            # The one place a model's temperature meets its output: after the step, the head,
            # the memory and the chunks, for every mode (dpm_worker/model/calibration.py).
            # Resumed rows are emitted already and are not calibrated again (_restore).
            probs = calibration.apply(probs)
        conv.rows.append(self._labeled(utt, probs, conv.ms, len(ids), best))
        conv.ms = 0.0
        return True

    def _labeled(
        self,
        utt: Utterance,
        probs: np.ndarray,
        ms: float,
        context_tokens: int,
        best: int | None = None,
    ) -> LabeledUtterance:
        parts = self._parts(utt)
        return labeled_row(
            utt, probs, self.vocab.labels, ms, context_tokens, parts, self.max_context, best
        )

    def _restore(self, slot: int, conv: _Conversation, state: ConversationState) -> None:
        """Load ``state`` into ``slot`` (memory, RNG, speakers, history, rows, averages)."""
        # Positions, row shapes and the RNG; the rest is the memory's and the averages'.
        tensors = restore_state(state, len(conv.utterances), len(self.vocab.labels))
        memory_fields: dict[int, dict[str, torch.Tensor]] = {}
        for name, tensor in tensors.items():
            head, _, tail = name.partition(".")
            if head == "slot":
                number, _, field_name = tail.partition(".")
                if not number.isdigit() or not field_name:
                    raise ConfigError(f"memory state key {name!r} is not slot.<k>.<field>")
                memory_fields.setdefault(int(number), {})[field_name] = tensor
        if memory_fields and self.memory is None:
            raise ConfigError("resume state has memory tensors but the labeler has no memory")
        for k, fields in sorted(memory_fields.items()):
            if k >= self.per_conversation:
                raise ConfigError(
                    f"resume state has memory slot {k}; this labeler keeps "
                    f"{self.per_conversation} per conversation"
                )
            assert self.memory is not None
            self.memory.import_slot(slot * self.per_conversation + k, fields)
        conv.ema = {int(name[4:]): t.clone() for name, t in tensors.items() if name[:4] == "ema."}
        active = conv.active
        active.speakers.update(state.speaker_slots)
        active.history.extend(state.history)
        active.position = sum(1 for owner in conv.owner if owner < state.position)
        rows = zip(conv.utterances, state.probs, state.ms, state.context_tokens, strict=False)
        conv.rows = [self._labeled(*row) for row in rows]
        if self.step.cache is not None:
            self._replay_cache(slot, conv, state.probs)

    def _replay_cache(self, slot: int, conv: _Conversation, probs: np.ndarray) -> None:
        """Rebuild a resumed conversation's history cache as the uninterrupted run built it.

        ``reuse``'s cached states depend on the whole conversation so far (each was computed
        seeing the history before it), so they are recomputed by running every earlier part's
        tokens through the cache in order, as the reads did (memory off, no writes: about one
        window-free read per earlier part). With ``history_labels: predicted`` the history
        also holds each part's predicted emotion, known here only per utterance: if an
        earlier utterance was read in chunks, the cache instead starts from the saved history
        window as tokens (close to, not equal to, the uninterrupted run).
        """
        assert self.step.cache is not None
        active = conv.active
        predicted = self.history_labels == "predicted"
        # an earlier utterance in chunks: fewer utterances than parts before the position
        chunked = len(set(conv.owner[: active.position])) < active.position
        if predicted and chunked:
            log.warning(
                "conversation %r: resumed with a history cache built from its saved window "
                "(an earlier utterance was read in chunks)",
                conv.key,
            )
            active.pending = list(active.history)
            return
        if self.memory is not None:
            self.memory.use(None)  # the cached reads ran with the memory off
        pending: list[int] = []
        for index in range(active.position):
            part = active.utterances[index]
            tokens = self.vocab.utterance_tokens(part.codes(), active.speakers[part.speaker])
            self.step.cache.last_logits([slot], [[*pending, *tokens]])
            if predicted:
                label = self.vocab.labels[int(np.argmax(probs[conv.owner[index]]))]
                pending = [self.vocab.emotion_token(label)]
        active.pending = pending


def label_batched(
    model: EmotionModel,
    config: LabelingConfig,
    conversations: Sequence[Sequence[Utterance]],
    slots: int,
) -> list[list[LabeledUtterance]]:
    """Every conversation's rows, in input order, labeled ``slots`` conversations at a time.

    A :class:`SlotLabeler` under continuous batching (a conversation takes a slot as soon as
    one frees); each conversation gets the rows it gets alone, whatever ``slots`` is.

    Raises:
        BadInputError: a conversation's utterance cannot be labeled (no audio tokens).
    """
    labeler = SlotLabeler(model, config, slots)
    out: list[list[LabeledUtterance]] = [[] for _ in conversations]
    pending = list(enumerate(conversations))[::-1]  # popped from the end: input order
    try:
        while pending or labeler.keys:
            while pending and labeler.free:
                index, utterances = pending.pop()
                labeler.admit(index, utterances)
            for key in [k for k in labeler.keys if labeler.finished(k)]:
                out[int(key)] = labeler.release(key)  # type: ignore[call-overload]
            if not labeler.keys:
                continue
            _, failed = labeler.advance()
            if failed:
                raise next(iter(failed.values()))
        return out
    finally:
        labeler.close()
