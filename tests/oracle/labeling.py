"""The reference labeler: one conversation at a time through peft's LoRA, slow and obvious.

The product labels with the batched slot engine (:class:`dpm_worker.memory.SlotLabeler`); this
is the independent implementation of the same algorithm that the engine's tests hold it to
(rows within 1e-5, every mode, write target, long-utterance rule and resume). It shares only
the model, its vocabulary and ``fit_context`` with the engine: its memory is peft's LoRA
(:mod:`tests.oracle.lora`), its writes one optimizer per adapter, its reads one unpadded pass.
The modes and the long-utterance rules are described in :mod:`dpm_worker.memory.rows`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dpm_worker.errors import ConfigError, LabelError
from dpm_worker.memory import ConversationState, LabelingConfig, capture_state, restore_state

# the output row, the chunking rule and prior-ema are the engine's own: the oracle checks the
# algorithm (the temporary LoRA written and read by peft), not the formatting of its rows
from dpm_worker.memory.rows import ema_read, labeled_row, utterance_parts
from dpm_worker.model import (
    IGNORE,
    EmotionModel,
    fit_context,
    history_budget,
    tail,
)
from dpm_worker.utterance import LabeledUtterance, Utterance
from tests.oracle.lora import TemporaryLoraMemory


@dataclass(frozen=True)
class PreparedUtterance:
    """One utterance ready for the model (see :meth:`ConversationLabeler.prepare`)."""

    speaker_slot: int
    tokens: list[int]
    ids: list[int]
    start_of_utt: int
    input_ids: torch.Tensor  # [1, len(ids)]


class ConversationLabeler:
    """Labels conversations with one backbone in one mode; reusable across conversations.

    Args:
        model: the emotion SLLM (``dpm_worker.model.backbone.EmotionModel``). In ``dpm`` mode its
            causal LM gets the temporary LoRA adapters injected once, here.
        config: the labeling configuration.
    """

    def __init__(self, model: EmotionModel, config: LabelingConfig) -> None:
        self.model = model
        self.config = config
        self.vocab = model.vocab
        self.history_labels = config.history_labels or getattr(model, "history_labels", "none")
        if config.memory.write_target == "audio+emotion" and self.history_labels != "predicted":
            raise ConfigError(
                "memory.write_target 'audio+emotion' needs history_labels 'predicted', "
                f"got {self.history_labels!r}"
            )
        self.max_context = int(model.max_context)
        if self.max_context < 2:
            raise ConfigError(f"model.max_context must be >= 2, got {self.max_context}")
        self.memory = (
            TemporaryLoraMemory(model.model, config.memory) if config.mode == "dpm" else None
        )
        audio = (self.vocab.audio_offset, self.vocab.audio_offset + self.vocab.n_audio)
        self._audio_range = audio
        self._emotion_range = (self.vocab.emotion_offset, self.vocab.size)
        self._emotion_ids = list(self.vocab.emotion_ids)
        # prior memory: the backbone's emotion logits at a lone speaker token, per speaker slot
        # (cleared per conversation; see _prior_read).
        self._speaker_logits: dict[int, torch.Tensor] = {}
        # prior-ema: the running average of each speaker slot's window reads (per conversation)
        self._ema: dict[int, torch.Tensor] = {}

    def close(self) -> None:
        """Remove the memory's adapters from the backbone (only needed to reuse it otherwise)."""
        if self.memory is not None:
            self.memory.close()

    def label_conversation(
        self,
        utterances: Iterable[Utterance],
        resume: ConversationState | None = None,
        after_utterance: Callable[[list[LabeledUtterance], dict[str, int], list[int]], None]
        | None = None,
    ) -> list[LabeledUtterance]:
        """Label a conversation's tokenized utterances, given in dialogue order.

        The memory (``dpm``) is reset before the first utterance and discarded after the last,
        so no conversation sees another's. Each result carries its utterance, identity and all.

        Args:
            utterances: the whole conversation, in dialogue order.
            resume: a state exported from an earlier, interrupted labeling of the same
                conversation with the same model and config: labeling continues at its
                position, exactly as if it had never stopped.
            after_utterance: called after each utterance with the rows so far, the speaker
                slots and the history (the caller's chance to :meth:`export_state`).
        """
        cfg = self.config
        utts = list(utterances)
        torch.manual_seed(cfg.seed)
        slots: dict[str, int] = {}
        history: list[int] = []
        predictions: list[LabeledUtterance] = []
        self._speaker_logits.clear()
        self._ema.clear()
        if self.memory is not None:
            self.memory.reset()
        if resume is not None:
            predictions = self._restore(resume, utts, slots, history)
        try:
            for utt in utts[len(predictions) :]:
                start = time.perf_counter()
                codes = utt.codes()
                parts = self.chunks(codes)
                total = np.zeros(len(self._emotion_ids), dtype=np.float64)
                for part in parts:
                    chunk = utt if len(parts) == 1 else dataclasses.replace(utt, audio_ids=part)
                    step = self.prepare(chunk, slots, history)
                    # The one tensor -> numpy conversion; the tables write these numbers.
                    read = self._read(step).float().cpu().numpy()
                    # Each chunk enters the history (and memory) as a turn with its own read.
                    self.remember(history, step.tokens, self.vocab.labels[int(np.argmax(read))])
                    total += read * (len(part) / len(codes))
                ms = (time.perf_counter() - start) * 1000.0
                predictions.append(self._row(utt, total.astype(np.float32), ms, len(step.ids)))
                if after_utterance is not None:
                    after_utterance(predictions, slots, history)
        finally:
            if self.memory is not None:
                self.memory.reset()
        return predictions

    def chunks(self, audio_ids: np.ndarray) -> list[np.ndarray]:
        """The parts an utterance is read in (:func:`utterance_parts`)."""
        return utterance_parts(audio_ids, self.max_context, self.config.long_utterances)

    def export_state(
        self, predictions: Sequence[LabeledUtterance], slots: dict[str, int], history: list[int]
    ) -> ConversationState:
        """A copy of the labeling state (call from ``after_utterance``; see ConversationState)."""
        probs = np.array([p.probs for p in predictions], dtype=np.float32)
        probs = probs.reshape(len(predictions), len(self.vocab.labels))
        tensors = self.memory.state_dict() if self.memory is not None else {}
        tensors.update({f"ema.{k}": v.detach().cpu().clone() for k, v in self._ema.items()})
        rows = ([p.ms for p in predictions], [p.context_tokens for p in predictions])
        return capture_state(probs, *rows, slots, history, tensors)

    def _restore(
        self, state: ConversationState, utts: Sequence[Utterance], slots: dict, history: list
    ) -> list[LabeledUtterance]:
        """Load ``state`` into the memory, RNG, slots and history; returns its rows."""
        tensors = restore_state(state, len(utts), len(self.vocab.labels))
        ema = {k: v for k, v in tensors.items() if k.startswith("ema.")}
        memory = {k: v for k, v in tensors.items() if k not in ema}
        if self.memory is not None:
            self.memory.load_state_dict(memory)
        elif memory:
            raise ConfigError("resume state has memory tensors but the labeler has no memory")
        self._ema.update({int(k[4:]): v.clone() for k, v in ema.items()})
        slots.update(state.speaker_slots)
        history.extend(state.history)
        rows = zip(utts, state.probs, state.ms, state.context_tokens, strict=False)
        return [self._row(*row) for row in rows]

    def _row(
        self, utt: Utterance, probs: np.ndarray, ms: float, context_tokens: int
    ) -> LabeledUtterance:
        # How the utterance was read follows from its length (so a resumed row says it too).
        parts = self.chunks(utt.codes())
        return labeled_row(
            utt, probs, self.vocab.labels, ms, context_tokens, parts, self.max_context
        )

    def prepare(
        self, utt: Utterance, slots: dict[str, int], history: list[int]
    ) -> PreparedUtterance:
        """The model input for ``utt``: its speaker slot, its tokens, history + tokens."""
        codes = utt.codes()
        speaker_slot = slots.setdefault(utt.speaker, len(slots))
        try:
            tokens = self.vocab.utterance_tokens(codes, speaker_slot)
        except ConfigError as exc:
            raise LabelError(f"utterance {utt.utterance_index}: {exc}") from exc
        if len(tokens) < 3:
            raise LabelError(f"utterance {utt.utterance_index} has no audio tokens")
        ids, start_of_utt = fit_context(self._history_part(history), tokens, self.max_context)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.model.device)
        return PreparedUtterance(speaker_slot, tokens, ids, start_of_utt, input_ids)

    def remember(self, history: list[int], tokens: list[int], label: str) -> None:
        """Append an utterance (and its predicted label, if the format has them) to history.

        History beyond what the mode reads is dropped, so memory stays constant per utterance.
        """
        cfg = self.config
        keep = history_budget(cfg.mode, cfg.window_tokens, self.max_context)
        history.extend(tokens)
        if self.history_labels == "predicted":
            history.append(self.vocab.emotion_token(label))
        if len(history) > 2 * keep:
            del history[: len(history) - keep]

    def _read(self, step: PreparedUtterance) -> torch.Tensor:
        """The emitted emotion distribution of one utterance: the mode's read, memory included.

        Without memory, the model's read of the input. With it, ``prior`` multiplies the
        backbone's read by the speaker's prior; the other write targets write first and read
        with the updated memory (DESIGN 5), except ``audio+prediction``, whose write returns
        the read it took before writing. ``read_gate`` < 1 emits the backbone's own read
        instead when that is confident enough.
        """
        memory, cfg = self.memory, self.config.memory
        if memory is None:
            with torch.no_grad():
                own = self.model.emotion_probs(step.input_ids)[0]
            return (
                self._ema_read(step.speaker_slot, own) if self.config.mode == "prior-ema" else own
            )
        base: torch.Tensor | None = None
        read: torch.Tensor | None = None
        if cfg.write_target == "prior":
            read, base = self._prior_read(step, memory)
        else:
            if cfg.read_gate < 1.0:
                memory.enable(False)  # the backbone's own answer on the same input
                with torch.no_grad():
                    base = self.model.emotion_probs(step.input_ids)[0]
            if cfg.steps_per_utterance:
                labels = self.write_labels(step.ids, step.start_of_utt)
                read = memory.write(
                    memory.slot_for(step.speaker_slot), step.input_ids, labels, self._emotion_ids
                )
            if read is None:
                with torch.no_grad():
                    read = self.model.emotion_probs(step.input_ids)[0]
        if cfg.read_gate < 1.0 and base is not None and float(base.max()) >= cfg.read_gate:
            return base
        return read

    def _ema_read(self, speaker_slot: int, read: torch.Tensor) -> torch.Tensor:
        """``prior-ema``: the read times the speaker's running average of earlier reads."""
        return ema_read(self._ema, speaker_slot, read, self.config)

    def _prior_read(
        self, step: PreparedUtterance, memory: TemporaryLoraMemory
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``prior`` memory: the backbone's read of the utterance times its speaker's prior.

        One pass with the memory off gives the backbone's read at ``<audio_end>`` (and, with
        ``prior_input: history``, its logits at the utterance's speaker token); the write
        (speaker token, alone or after the history, memory on) gives the prior from the
        speaker's earlier turns and then learns this read.

        Returns:
            The emitted probabilities and the backbone's own (memory-off) probabilities.
        """
        memory.enable(False)
        start = step.start_of_utt
        last = len(step.ids) - 1
        with torch.no_grad():
            if self.config.memory.prior_input == "speaker":
                prefix = step.input_ids[:, start : start + 1]
                own_logits = self._emotion_at(step.input_ids, [last])[0]
                at_spk = self._speaker_logits.get(step.speaker_slot)
                if at_spk is None:  # the same for every turn: the backbone is frozen here
                    at_spk = self._emotion_at(prefix, [0])[0]
                    self._speaker_logits[step.speaker_slot] = at_spk
            else:
                prefix = step.input_ids[:, : start + 1]
                at_spk, own_logits = self._emotion_at(step.input_ids, [start, last])
        own = torch.log_softmax(own_logits, dim=-1)
        prior = memory.write_prior(
            memory.slot_for(step.speaker_slot), prefix, at_spk, own.exp(), self._emotion_ids
        )
        read = torch.softmax(own + self.config.memory.prior_weight * prior, dim=-1)
        return read, own.exp()

    def _emotion_at(self, input_ids: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """Emotion logits (float32, ``[len(positions), n_labels]``) at the given positions."""
        keep = torch.tensor(positions, device=self.model.device)
        logits = self.model.model(input_ids=input_ids, logits_to_keep=keep).logits[0]
        return logits[:, self._emotion_ids].float()

    def _history_part(self, history: list[int]) -> list[int]:
        cfg = self.config
        return tail(history, history_budget(cfg.mode, cfg.window_tokens, self.max_context))

    def write_labels(self, ids: list[int], start_of_utt: int) -> torch.Tensor:
        """Write targets: the utterance's audio tokens (+ the history's emotion tokens)."""
        tokens = torch.tensor(ids, dtype=torch.long)
        positions = torch.arange(len(ids))
        lo, hi = self._audio_range
        mask = (positions >= start_of_utt) & (tokens >= lo) & (tokens < hi)
        if self.config.memory.write_target == "audio+emotion":
            elo, ehi = self._emotion_range
            mask |= (positions < start_of_utt) & (tokens >= elo) & (tokens < ehi)
        mask &= positions >= 1  # position 0 has nothing before it to predict it from
        labels = torch.where(mask, tokens, torch.full_like(tokens, IGNORE))
        return labels.unsqueeze(0).to(self.model.device)
