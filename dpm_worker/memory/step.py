"""The DPM step, batched: each active conversation's current utterance in, its emotions out.

One call of :func:`dpm_step` handles one utterance of every active conversation (one batch row
each). What a step does is owned by one small strategy object per write target:

=================================  ====================================================
strategy                           step
=================================  ====================================================
:class:`ReadOnly`                  modes without memory: the backbone's read
:class:`AudioWrite`                ``audio`` / ``audio+emotion``: write, then read with the
                                   updated memory; ``audio+prediction``: the read taken
                                   before the write (its step 0), then the write
:class:`PriorWrite`                ``prior``: the backbone's read (memory off) times the
                                   speaker's prior, which the write then updates
=================================  ====================================================

A model with an acoustic head (``dpm_worker.model.acoustic_head``) gives each row the head's
weighted log-probabilities; every strategy fuses them into its read (:meth:`Step.with_head`),
and ``prior`` fuses them before its write, so the speaker's prior learns the fused reads.

Rows are left-padded to a common length with an attention mask and position ids that start at
0 on each row's first real token, so every row's ``<audio_end>`` is the last column and each row
computes what it would alone (up to float rounding). The memory is a
:class:`~dpm_worker.memory.batched.BatchedLoraMemory`; a row names its memory slot. On a Llama
backbone the passes that need only the last column (reads with the memory off, the ``prior``
write on lone speaker tokens) run without padding and with the last layer at the last token
only (:mod:`dpm_worker.model.packed`).

The memory-loop trainer (:mod:`dpm_worker.training.memory_loop`) runs these same strategies
with ``training`` set: the reads keep their graph (the backbone learns from their loss), and
:meth:`Step.rewrite` repeats a past write, which the order-2 trainer replays through a memory
whose writes keep the graph (:mod:`dpm_worker.training.second_order`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dpm_worker.memory.batched import BatchedLoraMemory
from dpm_worker.memory.cache import HistoryCache
from dpm_worker.memory.config import MemoryConfig
from dpm_worker.model import IGNORE
from dpm_worker.model.packed import as_batch, last_token_logits, packs


@dataclass(frozen=True)
class StepRow:
    """One conversation's current utterance in a step.

    Args:
        ids: the model input (history part + ``<spk> audio... <audio_end>``).
        start_of_utt: where the utterance's ``<spk>`` sits in ``ids``.
        slot: the memory slot it writes to and reads from (ignored without memory).
        speaker: a key naming the speaker across steps (e.g. ``(conversation slot, speaker)``),
            for the ``prior`` memory's cache of the backbone's logits at a lone speaker token.
        labels: the write's targets, aligned with ``ids`` (``IGNORE`` where the loss is off).
        conversation: the conversation's slot (its history cache, with ``reuse``).
        new_ids: the tokens of ``ids`` not yet in the history cache (``reuse``).
        head: ``[n_labels]`` the model's acoustic head's log-probabilities for the utterance
            times its weight (``dpm_worker.model.acoustic_head``), added to the read before
            anything uses it (None: no head).
    """

    ids: list[int]
    start_of_utt: int
    slot: int = 0
    speaker: object = None
    labels: list[int] | None = None
    conversation: int = 0
    new_ids: list[int] | None = None
    head: torch.Tensor | None = None


@dataclass
class Padded:
    """Left-padded rows: ``input_ids``, ``attention_mask``, ``position_ids`` are ``[N, T]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    @classmethod
    def of(cls, seqs: Sequence[Sequence[int]], device: torch.device, pad: int = 0) -> Padded:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for n, seq in enumerate(seqs):
            ids[n, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[n, width - len(seq) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return cls(ids.to(device), mask.to(device), positions.to(device))

    def logits(self, lm: nn.Module, keep: int) -> torch.Tensor:
        """``[N, keep, V]`` logits of the last ``keep`` columns."""
        return lm(
            input_ids=self.input_ids,
            attention_mask=self.attention_mask,
            position_ids=self.position_ids,
            logits_to_keep=keep,
        ).logits


class Step:
    """What every strategy shares: the backbone, the memory, the emotion token ids."""

    # what the last step's write trained toward, beyond its rows (``prior``: the backbone's
    # reads), for :meth:`rewrite`; None where the rows say it all (audio writes)
    written: torch.Tensor | None = None
    # seconds spent in the memory's writes so far (the rest of a step is the backbone's reads);
    # on CUDA the kernels a write queued may finish later, inside the read's time
    write_s: float = 0.0

    def __init__(
        self,
        lm: nn.Module,
        emotion_ids: Sequence[int],
        memory: BatchedLoraMemory | None = None,
        config: MemoryConfig | None = None,
    ) -> None:
        self.lm, self.memory = lm, memory
        self.config = config or MemoryConfig()
        self.emotion_ids = list(emotion_ids)
        self.device = next(lm.parameters()).device
        # ``history_cache: reuse`` (set by the engine where the read runs with the memory off)
        self.cache: HistoryCache | None = None
        # Llama: reads without padding, the last layer at the last token (model.packed)
        self.packed = packs(lm)
        # The memory-loop trainer: reads keep the graph (the backbone learns from them) and
        # nothing that depends on the backbone's weights is cached across steps.
        self.training = False

    def backbone_read(self, rows: Sequence[StepRow]) -> torch.Tensor:
        """``[N, n_labels]`` emotion logits at ``<audio_end>`` with the memory off, computing
        only the new tokens after each conversation's cached history when reusing it."""
        if self.cache is None:
            return self.emotion_logits(rows, memory_on=False)
        if self.memory is not None:
            self.memory.use(None)
        new = [r.new_ids if r.new_ids is not None else r.ids for r in rows]
        logits = self.cache.last_logits([r.conversation for r in rows], new)
        return logits[:, self.emotion_ids].float()

    def emotion_logits(self, rows: Sequence[StepRow], memory_on: bool) -> torch.Tensor:
        """``[N, n_labels]`` float32 emotion logits at each row's ``<audio_end>``."""
        if self.memory is not None:
            self.memory.use([r.slot for r in rows] if memory_on else None)
        with torch.set_grad_enabled(self.training):
            return self.last_logits([r.ids for r in rows], memory_on)[:, self.emotion_ids].float()

    def last_logits(self, seqs: Sequence[Sequence[int]], memory_on: bool) -> torch.Tensor:
        """``[N, V]`` logits at each sequence's last token; packed where nothing needs the
        rows as batch rows (``dpm_worker.model.packed``), padded otherwise."""
        if self.packed and (not memory_on or as_batch(seqs)):
            return last_token_logits(self.lm, seqs)
        return Padded.of(seqs, self.device).logits(self.lm, 1)[:, -1]

    def with_head(self, rows: Sequence[StepRow], read: torch.Tensor) -> torch.Tensor:
        """``read`` (``[N, n_labels]`` log-probabilities) fused with each row's acoustic head,
        renormalised: ``p ∝ p_read × p_head ** weight`` (unchanged without a head)."""
        if all(r.head is None for r in rows):
            return read
        bias = torch.stack(
            [torch.zeros(read.shape[1]) if r.head is None else r.head.float() for r in rows]
        )
        return torch.log_softmax(read + bias.to(read.device), dim=-1)

    def __call__(self, rows: Sequence[StepRow]) -> torch.Tensor:
        """``[N, n_labels]`` emotion distributions of the rows (one step: writes and reads)."""
        return self.log_probs(rows).exp()

    def log_probs(self, rows: Sequence[StepRow]) -> torch.Tensor:
        """The step, as ``[N, n_labels]`` log-probabilities (with the graph when training)."""
        raise NotImplementedError

    def rewrite(self, rows: Sequence[StepRow], targets: torch.Tensor | None) -> None:
        """Repeat the write that a step on ``rows`` made (``targets``: what it wrote toward,
        :attr:`written`), on the memory as it is now: the order-2 trainer's replay."""
        raise NotImplementedError


class ReadOnly(Step):
    """Modes ``utterance``, ``window``, ``full`` (and ``dpm`` with 0 steps): the backbone's read."""

    def log_probs(self, rows: Sequence[StepRow]) -> torch.Tensor:
        return self.with_head(rows, torch.log_softmax(self.backbone_read(rows), dim=-1))


class AudioWrite(Step):
    """``audio``, ``audio+emotion``, ``audio+prediction``: train on the utterance, read."""

    def log_probs(self, rows: Sequence[StepRow]) -> torch.Tensor:
        cfg, memory = self.config, self.memory
        assert memory is not None
        base = None
        if cfg.read_gate < 1.0:
            base = torch.log_softmax(self.emotion_logits(rows, memory_on=False), dim=-1)
        read = self.write(rows) if cfg.steps_per_utterance else None
        if read is None:
            read = torch.log_softmax(self.emotion_logits(rows, memory_on=True), dim=-1)
        if base is not None:
            confident = base.detach().exp().max(dim=-1).values >= cfg.read_gate
            read = torch.where(confident[:, None], base, read)
        return self.with_head(rows, read)

    def rewrite(self, rows: Sequence[StepRow], targets: torch.Tensor | None) -> None:
        self.write(rows)

    def write(self, rows: Sequence[StepRow]) -> torch.Tensor | None:
        """``steps_per_utterance`` steps on every row's slot; ``audio+prediction``'s read
        (log-probabilities)."""
        start = time.perf_counter()
        try:
            return self._write(rows)
        finally:
            self.write_s += time.perf_counter() - start

    def _write(self, rows: Sequence[StepRow]) -> torch.Tensor | None:
        cfg, memory = self.config, self.memory
        assert memory is not None
        encode = cfg.write_target == "audio+prediction"
        slots = [r.slot for r in rows]
        batch = Padded.of([r.ids for r in rows], self.device)
        width = batch.input_ids.shape[1]
        labels = torch.full_like(batch.input_ids, IGNORE)
        for n, row in enumerate(rows):
            assert row.labels is not None
            labels[n, width - len(row.ids) :] = torch.tensor(row.labels, dtype=torch.long)
        labelled = (labels != IGNORE).any(dim=0).nonzero().flatten()
        # Logits only from the first labelled column on (the lm_head over the history is the
        # largest matmul a write would otherwise do).
        first = int(labelled.min())
        targets = labels[:, first:]
        counts = (targets != IGNORE).sum(dim=1)
        read: torch.Tensor | None = None
        for _ in range(cfg.steps_per_utterance):
            memory.use(slots)
            logits = batch.logits(self.lm, width - first + 1)
            ce = nn.functional.cross_entropy(
                logits[:, :-1].float().flatten(0, 1),
                targets.flatten(),
                ignore_index=IGNORE,
                reduction="none",
            ).view(len(rows), -1)
            loss = ce.sum(dim=1) / counts  # each row's mean, as when written alone
            if encode:
                emotion = logits[:, -1, self.emotion_ids].float()
                if read is None:  # the memory before this write: the read of step 0
                    kept = emotion if self.training else emotion.detach()  # the trainer's graph
                    read = torch.log_softmax(kept, dim=-1)
                confidence, label = read.detach().exp().max(dim=-1)
                term = (
                    cfg.emotion_weight
                    * confidence
                    * nn.functional.cross_entropy(emotion, label, reduction="none")
                )
                loss = loss + torch.where(confidence >= cfg.confidence_gate, term, 0.0)
            memory.step(slots, loss.sum(), retain_graph=self.training)
        if encode and read is None:
            read = torch.log_softmax(self.emotion_logits(rows, memory_on=True), dim=-1)
        return read


class PriorWrite(Step):
    """``prior``: the backbone's read times the speaker's prior, then the prior learns the read.

    The prior is the change the memory makes to the emotion logits at the utterance's speaker
    token (alone, or after the history window: ``prior_input``). The backbone's logits at a
    lone speaker token never change while labeling (frozen backbone, memory off), so they are
    kept per speaker (not while training the backbone).
    """

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.speaker_logits: dict[object, torch.Tensor] = {}

    def forget(self, speaker: object) -> None:
        """Drop a speaker's cached logits (its conversation ended)."""
        self.speaker_logits.pop(speaker, None)

    def log_probs(self, rows: Sequence[StepRow]) -> torch.Tensor:
        cfg, memory = self.config, self.memory
        assert memory is not None
        memory.use(None)
        prefixes = self.prefixes(rows)
        if cfg.prior_input == "speaker":
            own_logits = self.backbone_read(rows)
            at_spk = self.at_speaker(rows, prefixes)
        else:
            batch = Padded.of([r.ids for r in rows], self.device)
            width = batch.input_ids.shape[1]
            spk_col = [width - len(r.ids) + r.start_of_utt for r in rows]
            first = min(spk_col)
            with torch.set_grad_enabled(self.training):
                logits = batch.logits(self.lm, width - first)[..., self.emotion_ids].float()
            at = torch.tensor([c - first for c in spk_col], device=logits.device)
            at_spk = logits[torch.arange(len(rows), device=logits.device), at]
            own_logits = logits[:, -1]
        # the prior learns the model's read: the backbone's, fused with the acoustic head
        own = self.with_head(rows, torch.log_softmax(own_logits, dim=-1))
        self.written = own.detach().exp()
        prior = self.write(rows, prefixes, at_spk, self.written)
        read = torch.log_softmax(own + cfg.prior_weight * prior, dim=-1)
        if cfg.read_gate < 1.0:  # the backbone's own read where it is confident enough
            confident = self.written.max(dim=-1).values >= cfg.read_gate
            read = torch.where(confident[:, None], own, read)
        return read

    def prefixes(self, rows: Sequence[StepRow]) -> list[list[int]]:
        """What the prior reads: each row's speaker token, alone or after its history."""
        if self.config.prior_input == "speaker":
            return [[r.ids[r.start_of_utt]] for r in rows]
        return [r.ids[: r.start_of_utt + 1] for r in rows]

    def at_speaker(self, rows: Sequence[StepRow], prefixes: list[list[int]]) -> torch.Tensor:
        """``[N, n_labels]`` the backbone's emotion logits at the end of each row's prefix
        (:meth:`prefixes`), memory off; cached per speaker for lone speaker tokens."""
        cached = not self.training and self.config.prior_input == "speaker"
        missing = [
            (row, prefix)
            for row, prefix in zip(rows, prefixes, strict=True)
            if not cached or row.speaker not in self.speaker_logits
        ]
        if missing:
            passes = [StepRow(prefix, 0, row.slot) for row, prefix in missing]
            logits = self.emotion_logits(passes, False)
            if not cached:
                return logits
            for (row, _), value in zip(missing, logits, strict=True):
                self.speaker_logits[row.speaker] = value
        return torch.stack([self.speaker_logits[r.speaker] for r in rows])

    def rewrite(self, rows: Sequence[StepRow], targets: torch.Tensor | None) -> None:
        assert targets is not None
        prefixes = self.prefixes(rows)
        self.write(rows, prefixes, self.at_speaker(rows, prefixes), targets)

    def write(
        self,
        rows: Sequence[StepRow],
        prefixes: list[list[int]],
        base: torch.Tensor,
        target: torch.Tensor,
    ) -> torch.Tensor:
        """Train each row's prior toward ``target``; the priors before the write (log-probs)."""
        start = time.perf_counter()
        try:
            return self._write(rows, prefixes, base, target)
        finally:
            self.write_s += time.perf_counter() - start

    def _write(
        self,
        rows: Sequence[StepRow],
        prefixes: list[list[int]],
        base: torch.Tensor,
        target: torch.Tensor,
    ) -> torch.Tensor:
        memory = self.memory
        assert memory is not None
        slots = [r.slot for r in rows]
        prior: torch.Tensor | None = None
        for _ in range(self.config.steps_per_utterance):
            memory.use(slots)
            delta = self.last_logits(prefixes, True)[:, self.emotion_ids].float() - base
            if prior is None:  # the prior before this write, with its graph when training
                prior = torch.log_softmax(delta if self.training else delta.detach(), dim=-1)
            loss = -(target * torch.log_softmax(delta, dim=-1)).sum()
            # while training, the read shares these passes' graph (and the backbone's ``base``)
            memory.step(slots, loss, retain_graph=self.training)
        if prior is None:  # zero steps: read without writing
            memory.use(slots)
            with torch.set_grad_enabled(self.training):
                logits = self.last_logits(prefixes, True)[:, self.emotion_ids].float()
            prior = torch.log_softmax(logits - base, dim=-1)
        return prior


def strategy_for(
    mode: str,
    lm: nn.Module,
    emotion_ids: Sequence[int],
    memory: BatchedLoraMemory | None,
    config: MemoryConfig,
) -> Step:
    """The step of ``mode`` with ``config.write_target`` (``ReadOnly`` without memory)."""
    if mode != "dpm" or memory is None:
        return ReadOnly(lm, emotion_ids)
    if config.write_target == "prior":
        return PriorWrite(lm, emotion_ids, memory, config)
    return AudioWrite(lm, emotion_ids, memory, config)


def dpm_step(step: Step, rows: Sequence[StepRow]) -> torch.Tensor:
    """The emotion distributions (``[len(rows), n_labels]`` float32) of one utterance per row."""
    return step(rows).detach()
