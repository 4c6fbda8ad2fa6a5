"""Backbone training: conversation streams, random windows, the paper's loss, validation.

Loss per window (DESIGN 1): ``audio_weight * L_a + emotion_weight * L_e`` (0.5/0.5 as the
paper), where L_a is next-token cross-entropy on every audio token of the stream and L_e is
cross-entropy over the emotion tokens only, read at every ``<audio_end>``.

Plus an auxiliary loss (training only, its heads are discarded): at each ``<audio_end>``, small
linear heads also predict the labels of the same speaker's ``aux_previous`` earlier utterances.
Why: in the synthetic corpus (and in real dialogue) half the utterances carry no prosodic cue
and only the speaker's recent turns reveal the mood. The study found that a small model trained
on L_e alone never learns to look back; asking each ``<audio_end>`` to report the speaker's
earlier emotions trains exactly the attention path (current ``<audio_end>`` -> the same
speaker's earlier ``<audio_end>`` states) that the main emotion read-out then reuses.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dpm_worker.errors import check_fields
from dpm_worker.model import HISTORY_FORMATS, IGNORE, EmotionModel
from dpm_worker.training.batches import Batch, ConversationStream, make_batch
from dpm_worker.training.precision import autocast, autocast_dtype
from dpm_worker.training.schedule import lr_at
from dpm_worker.training.windows import corpus_shares, isolate_rows, sample_starts


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and data settings of ``dpm train`` (every field a YAML key).

    Args:
        window_tokens: training window; also the model's ``max_context`` (train on windows as
            long as the longest context you evaluate).
        batch_size: windows per step.
        epochs: passes over the training tokens (one epoch = as many windows as it takes to
            cover the training streams' tokens once).
        max_minutes: stop after this wall time (0: no limit); the best checkpoint is kept.
        lr: peak learning rate (AdamW), with linear warm-up and cosine decay to lr * min_lr_ratio.
        audio_weight, emotion_weight: weights of L_a and L_e.
        aux_previous: number of the same speaker's earlier utterances whose labels are predicted
            by auxiliary heads at each ``<audio_end>`` (0: off).
        aux_weight: weight of the auxiliary loss.
        aligned_fraction: share of windows that start on an utterance boundary (see
            :func:`sample_starts`); the rest start anywhere.
        isolated_fraction: share of batch rows that hold one utterance alone (its tokens up to
            its ``<audio_end>``, then padding), read with no history exactly as ``utterance``
            mode reads it (see :func:`isolate_rows`). 0 keeps the old sampling unchanged.
        history_labels: ``none`` or ``predicted`` (emotion tokens after each ``<audio_end>``).
        label_noise: with ``predicted``, probability that a history emotion token is replaced by
            a random label, so the model learns not to trust (and copy) its own past labels.
        val_fraction: fraction of conversations held out for validation.
        val_group: a regular expression over conversation ids; conversations with the same
            match are held out together (``actor_\\d+``: a RAVDESS actor's orders and
            augmented copies), so validation reads speakers training never heard. Empty: each
            conversation on its own.
        corpus_pattern: a regular expression over conversation ids whose first capture group
            (else the whole match) names a conversation's corpus; training windows are then
            drawn so that every corpus gets its weight's share of them (within a corpus, in
            proportion to conversation length). Ids without a match form one corpus ``""``.
            Empty: no corpora, windows in proportion to length (as before).
        corpus_weights: ``NAME=WEIGHT`` entries; a corpus not named weighs 1, so the default
            balances the corpora (a corpus with ten times the audio gets the same share).
        evals_per_epoch: validation (and checkpoint) passes per epoch.
        seed: seeds the split, the windows and the initialisation.
        threads: torch CPU threads.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``; what
            trains keeps fp32 weights either way (see :mod:`dpm_worker.training.precision`).
        gradient_checkpointing: recompute activations in backward (long windows, big bases).
        grad_accum_steps: micro-batches of ``batch_size`` per optimizer step (the effective
            batch is their product; an epoch counts effective batches).
    """

    window_tokens: int = 512
    batch_size: int = 8
    epochs: float = 10.0
    max_minutes: float = 0.0
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    audio_weight: float = 0.5
    emotion_weight: float = 0.5
    aux_previous: int = 2
    aux_weight: float = 0.5
    aligned_fraction: float = 0.5
    isolated_fraction: float = 0.0
    history_labels: str = "none"
    label_noise: float = 0.3
    val_fraction: float = 0.1
    val_group: str = ""
    corpus_pattern: str = ""
    corpus_weights: tuple[str, ...] = ()
    evals_per_epoch: int = 1
    seed: int = 0
    threads: int = 2
    device: str = "auto"
    precision: str = "auto"
    gradient_checkpointing: bool = False
    grad_accum_steps: int = 1

    def __post_init__(self) -> None:
        checks = {
            "window_tokens": self.window_tokens >= 16,
            "batch_size": self.batch_size >= 1,
            "epochs": self.epochs > 0,
            "max_minutes": self.max_minutes >= 0,
            "lr": self.lr > 0,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "warmup_steps": self.warmup_steps >= 0,
            "aux_previous": self.aux_previous >= 0,
            "aligned_fraction": 0 <= self.aligned_fraction <= 1,
            "isolated_fraction": 0 <= self.isolated_fraction <= 1,
            "history_labels": self.history_labels in HISTORY_FORMATS,
            "label_noise": 0 <= self.label_noise <= 1,
            "val_fraction": 0 < self.val_fraction < 1,
            "val_group": _compiles(self.val_group),
            "corpus_pattern": _compiles(self.corpus_pattern),
            "corpus_weights": _weights_parse(self.corpus_weights),
            "evals_per_epoch": self.evals_per_epoch >= 1,
            "threads": self.threads >= 1,
            "device": self.device.split(":")[0] in ("auto", "cpu", "cuda"),
            "precision": self.precision in ("auto", "fp32", "bf16"),
            "grad_accum_steps": self.grad_accum_steps >= 1,
        }
        check_fields("train", self, checks)


def _weights_parse(entries: tuple[str, ...]) -> bool:
    """Whether every entry is ``NAME=WEIGHT`` with a weight >= 0."""
    try:
        return all(float(e.rpartition("=")[2]) >= 0 and "=" in e for e in entries)
    except ValueError:
        return False


def _compiles(pattern: str) -> bool:
    """Whether ``pattern`` is a valid regular expression."""
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


class AuxHeads(torch.nn.Module):
    """Linear heads: hidden state at ``<audio_end>`` -> labels of the speaker's earlier turns."""

    def __init__(self, hidden: int, n_labels: int, k: int) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden, n_labels) for _ in range(k))

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = []
        for head, target in zip(self.heads, targets, strict=True):
            keep = target != IGNORE
            if keep.any():
                losses.append(F.cross_entropy(head(hidden[keep]), target[keep]))
        return torch.stack(losses).mean() if losses else hidden.sum() * 0.0


def compute_loss(
    model: EmotionModel,
    batch: Batch,
    config: TrainConfig,
    aux_heads: AuxHeads | None,
    scales: dict[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one batch and its parts (for logging).

    Args:
        scales: a factor per part (``L_a``, ``L_e``, ``L_aux``) applied to the returned loss
            only, not to the logged parts. Data-parallel workers use it to weight their slice's
            means by the slice's share of the global batch's targets, so the averaged gradient
            is the one of the whole batch's means.
    """
    scale = scales or {}
    lm = model.model
    out = lm(
        input_ids=batch.input_ids.to(model.device),
        attention_mask=batch.attention_mask.to(model.device),
        output_hidden_states=aux_heads is not None,
    )
    logits = out.logits.float()
    audio_t = batch.audio_targets.to(model.device)
    emo_t = batch.emotion_targets.to(model.device)
    loss_a = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), audio_t.reshape(-1), ignore_index=IGNORE
    )
    keep = emo_t != IGNORE
    loss_e = (
        F.cross_entropy(model.emotion_logits(logits[keep]), emo_t[keep])
        if keep.any()
        else logits.sum() * 0
    )
    loss = config.audio_weight * loss_a * scale.get("L_a", 1.0)
    loss = loss + config.emotion_weight * loss_e * scale.get("L_e", 1.0)
    parts = {"L_a": loss_a.item(), "L_e": loss_e.item()}
    if aux_heads is not None:
        loss_aux = aux_heads(out.hidden_states[-1].float(), batch.aux_targets.to(model.device))
        loss = loss + config.aux_weight * loss_aux * scale.get("L_aux", 1.0)
        parts["L_aux"] = loss_aux.item()
    return loss, parts


def train(
    model: EmotionModel,
    train_streams: Sequence[ConversationStream],
    config: TrainConfig,
    *,
    on_eval: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train ``model.model`` in place on random windows of ``train_streams``.

    The model is trained where it is (``model.device``; see
    :func:`dpm_worker.training.precision.place_for_training`), under bf16 autocast when
    ``config.precision`` says so for that device.

    Args:
        model: the model to train (its trainable parameters are whatever requires grad).
        train_streams: training conversations.
        config: the settings.
        on_eval: called as ``on_eval(step, epoch)`` ``evals_per_epoch`` times per epoch and at
            the end (validation and checkpointing live there, in the caller).
        progress: show a tqdm bar.

    Returns:
        One dict per logged interval (step, epoch, lr, loss parts, tokens/s).
    """
    from tqdm import tqdm

    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    shares = corpus_shares(train_streams, config.corpus_pattern, config.corpus_weights)
    tokens_total = sum(len(s.tokens) for s in train_streams)
    per_step = config.window_tokens * config.batch_size * config.grad_accum_steps
    steps_per_epoch = max(1, math.ceil(tokens_total / per_step))
    cast = autocast_dtype(model.device, config.precision)
    total = max(1, int(config.epochs * steps_per_epoch))
    eval_every = max(1, steps_per_epoch // config.evals_per_epoch)
    hidden = int(model.model.get_input_embeddings().weight.size(1))  # type: ignore[operator]
    aux = (
        AuxHeads(hidden, len(model.vocab.labels), config.aux_previous).to(model.device)
        if config.aux_previous
        else None
    )
    params = [p for p in model.model.parameters() if p.requires_grad]
    params += list(aux.parameters()) if aux is not None else []
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    model.model.train()
    started = time.monotonic()
    history: list[dict] = []
    running: dict[str, float] = {}
    bar = tqdm(range(total), desc="train", unit="step", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, config, (time.monotonic() - started) / 60)
        optimizer.zero_grad(set_to_none=True)
        parts: dict[str, float] = {}
        for _micro in range(config.grad_accum_steps):
            streams, starts = sample_starts(
                train_streams, config.window_tokens, config.batch_size, rng,
                config.aligned_fraction, shares,
            )  # fmt: skip
            starts, lengths = isolate_rows(streams, starts, config.isolated_fraction, rng)
            batch = make_batch(
                model.vocab, streams, starts, config.window_tokens,
                history_labels=config.history_labels, label_noise=config.label_noise, rng=rng,
                lengths=lengths,
            )  # fmt: skip
            with autocast(model.device, cast):
                loss, micro_parts = compute_loss(model, batch, config, aux)
            (loss / config.grad_accum_steps).backward()
            for name, value in micro_parts.items():
                parts[name] = parts.get(name, 0.0) + value / config.grad_accum_steps
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        for name, value in parts.items():
            running[name] = 0.9 * running.get(name, value) + 0.1 * value
        bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()})
        minutes = (time.monotonic() - started) / 60
        out_of_time = config.max_minutes and minutes >= config.max_minutes
        if (step + 1) % eval_every == 0 or step + 1 == total or out_of_time:
            elapsed = time.monotonic() - started
            record = {"step": step + 1, "epoch": (step + 1) / steps_per_epoch, "lr": lr_at(step, total, config, elapsed / 60),
                      "minutes": elapsed / 60, **running}  # fmt: skip
            history.append(record)
            if on_eval is not None:
                model.model.eval()
                on_eval(step + 1, record["epoch"])
                model.model.train()
        if out_of_time:
            break
    bar.close()
    model.model.eval()
    return history
