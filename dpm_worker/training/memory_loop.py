"""Train the backbone with the memory loop inside, so it learns to read what DPM writes.

Why: a backbone trained only on plain windows reads a temporary-LoRA shift mostly as noise
(docs/dpm.md): small writes change nothing, larger ones hurt. Here each training conversation
is labeled by the ``dpm`` labeling engine itself (:class:`SlotLabeler`'s rows, one
conversation at a time, and its DPM step, :mod:`dpm_worker.memory.step`: per utterance a write
to the speaker's temporary LoRA and the read at ``<audio_end>``, in the write target's order),
with the step's ``training`` set: the read keeps its graph and its cross-entropy against the
gold label trains the backbone.

``order: 1`` (as first-order MAML): the read loss's gradient is taken at the adapted point, the
adapter's values constants (no gradient through the write; a write's gradient reaches only the
adapter). ``order: 2``: the memory's writes keep the graph (``second_order.py``), so the read's
loss reaches the backbone through a speaker's last ``truncate_writes`` writes too.
Plain window batches (``plain_every``) keep the backbone good without its memory
(``utterance``/``window`` modes) and keep its audio head trained.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from dpm_worker.errors import ConfigError, check_fields
from dpm_worker.memory import (
    BatchedLoraMemory,
    LabelingConfig,
    MemoryConfig,
    SlotLabeler,
    StepRow,
    label_batched,
)
from dpm_worker.model import EmotionModel
from dpm_worker.training.batches import ConversationStream, make_batch
from dpm_worker.training.conversations import TrainingConversation
from dpm_worker.training.loop import AuxHeads, TrainConfig, compute_loss
from dpm_worker.training.schedule import lr_at
from dpm_worker.training.second_order import (
    GraphLoraMemory,
    TruncatedWrites,
    twice_differentiable,
)
from dpm_worker.training.windows import sample_starts


@dataclass(frozen=True)
class MemoryLoopConfig:
    """Settings of training with the memory loop inside (the ``memory_loop`` YAML section).

    Args:
        epochs: passes over the training conversations (each labeled whole, in order).
        max_minutes: stop after this wall time (0: no limit).
        lr: peak AdamW learning rate of the backbone (warm-up, then cosine decay to
            ``lr * min_lr_ratio``: the schedule of ``dpm train``, :func:`training.lr_at`).
        min_lr_ratio: where the cosine decay ends, as a fraction of ``lr``.
        warmup_steps: backbone optimizer steps of linear warm-up.
        utterances_per_step: read losses averaged per backbone update.
        plain_every: one plain window batch (the ``dpm train`` loss) after every this many
            backbone updates; 0 never.
        weight_decay, grad_clip: of the backbone's optimizer.
        window_tokens: n_r of the ``dpm`` reads (label with the same).
        seed: conversation order.
        order: 1, no gradient through the writes; 2, through them (module docstring). The
            write's k is the memory's ``steps_per_utterance``, so training writes as labeling.
        truncate_writes: M, the latest writes of a speaker the order-2 gradient flows through.
    """

    epochs: float = 2.0
    max_minutes: float = 0.0
    lr: float = 2e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    utterances_per_step: int = 8
    plain_every: int = 2
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    window_tokens: int = 256
    seed: int = 0
    order: int = 1
    truncate_writes: int = 2

    def __post_init__(self) -> None:
        checks = {
            "order": self.order in (1, 2),
            "truncate_writes": self.truncate_writes >= 1,
            "epochs": self.epochs > 0,
            "max_minutes": self.max_minutes >= 0,
            "lr": math.isfinite(self.lr) and self.lr > 0,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "warmup_steps": self.warmup_steps >= 0,
            "utterances_per_step": self.utterances_per_step >= 1,
            "plain_every": self.plain_every >= 0,
            "weight_decay": self.weight_decay >= 0,
            "grad_clip": self.grad_clip > 0,
            "window_tokens": self.window_tokens >= 0,
        }
        check_fields("memory_loop", self, checks)


@dataclass
class _Run:
    """One :meth:`MemoryLoopTrainer.train` call: its plain-batch streams, random state,
    schedule length, start time and counters."""

    streams: Sequence[ConversationStream]
    rng: np.random.Generator
    total_updates: int
    started: float = field(default_factory=time.monotonic)
    updates: int = 0
    pending: int = 0  # read losses since the last update

    def minutes(self) -> float:
        return (time.monotonic() - self.started) / 60


class MemoryLoopTrainer:
    """Trains ``model``'s backbone through the ``dpm`` labeling engine's step (module docstring).

    Args:
        model: the model to train in place (the batched memory's adapters are wrapped around
            its LM's target layers until :meth:`close`).
        memory: the temporary LoRA used in training: label with the same one (and the same
            ``config.window_tokens``).
        config: the outer loop's settings.
        plain: the plain-batch settings (window length, loss weights, aux heads); None for no
            plain batches.
    """

    def __init__(
        self,
        model: EmotionModel,
        memory: MemoryConfig,
        config: MemoryLoopConfig,
        plain: TrainConfig | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.plain = plain
        self.labeling = LabelingConfig(
            mode="dpm", window_tokens=config.window_tokens, memory=memory
        )
        # A clean copy before the adapters go in: checkpoints are saved from it.
        self._clean_lm = copy.deepcopy(model.model)
        # The labeling engine, one conversation at a time, its step keeping the reads' graph.
        self.engine = SlotLabeler(
            model,
            self.labeling,
            slots=1,
            memory_class=GraphLoraMemory if config.order == 2 else BatchedLoraMemory,
        )
        if self.engine.memory is None:  # pragma: no cover - mode dpm always builds one
            raise ConfigError("dpm labeling built no memory")
        self.memory: BatchedLoraMemory = self.engine.memory
        self.step = self.engine.step
        self.step.training = True
        self.chain = (
            TruncatedWrites(self.step, self.memory, config.truncate_writes)
            if isinstance(self.memory, GraphLoraMemory)
            else None
        )
        self.backbone_params = [
            p for name, p in model.model.named_parameters() if "lora_" not in name
        ]
        hidden = int(model.model.get_input_embeddings().weight.size(1))  # type: ignore[operator]
        self.aux = (
            AuxHeads(hidden, len(model.vocab.labels), plain.aux_previous).to(model.device)
            if plain is not None and plain.aux_previous
            else None
        )
        params = self.backbone_params + (list(self.aux.parameters()) if self.aux else [])
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self._params = params

    # -- the loop -------------------------------------------------------------------------------

    def train(
        self,
        conversations: Sequence[TrainingConversation],
        streams: Sequence[ConversationStream] = (),
        *,
        on_epoch: Callable[[float], None] | None = None,
        progress: bool = True,
    ) -> list[dict]:
        """Label every conversation through the memory loop, ``epochs`` times, training on it.

        Args:
            conversations: the training conversations.
            streams: the same conversations as streams, for the plain window batches.
            on_epoch: called with the epoch number after each epoch and at the end
                (validation and checkpoints live there, in the caller).
            progress: show a tqdm bar (utterances).

        Returns:
            One record per epoch: read loss, plain loss, minutes, utterances.
        """
        from tqdm import tqdm

        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        n_utts = sum(len(c.utterances) for c in conversations)
        run = self._run = _Run(
            streams, rng, max(1, int(cfg.epochs * n_utts / cfg.utterances_per_step))
        )
        history: list[dict] = []
        bar = tqdm(total=int(cfg.epochs * n_utts), desc="memory loop", unit="utt",
                   disable=not progress)  # fmt: skip
        epoch = 0.0
        stop = False
        while epoch < cfg.epochs and not stop:
            order = rng.permutation(len(conversations))
            running = {"L_read": 0.0, "L_plain": 0.0, "n": 0, "n_plain": 0}
            for index in order:
                conv = conversations[int(index)]
                losses = self._conversation(conv)
                running["L_read"] += sum(losses["read"])
                running["L_plain"] += sum(losses["plain"])
                running["n"] += len(losses["read"])
                running["n_plain"] += len(losses["plain"])
                bar.update(len(conv.utterances))
                bar.set_postfix(L_read=f"{running['L_read'] / max(1, running['n']):.3f}")
                if cfg.max_minutes and run.minutes() >= cfg.max_minutes:
                    stop = True
                    break
                if run.updates >= run.total_updates:
                    break
            epoch += 1.0
            history.append({
                "epoch": epoch, "updates": run.updates, "utterances": running["n"],
                "L_read": running["L_read"] / max(1, running["n"]),
                "L_plain": running["L_plain"] / max(1, running["n_plain"]),
                "minutes": round(run.minutes(), 2),
            })  # fmt: skip
            if on_epoch is not None:
                on_epoch(epoch)
            if run.updates >= run.total_updates:
                break
        bar.close()
        return history

    def _conversation(self, conv: TrainingConversation) -> dict[str, list[float]]:
        """Label one conversation in order with the labeling step; every read's loss trains
        the backbone. Each read's backward runs before the next step (the memory's writes
        change its adapters, the backbone's optimizer may step)."""
        engine = self.engine
        losses: dict[str, list[float]] = {"read": [], "plain": []}
        active = engine.begin(0, conv.utterances)
        if self.chain is not None:
            self.chain.reset()
        self._set_backbone_trainable(True)
        try:
            for gold in conv.labels:
                row, tokens = engine.next_row(0, active)
                emotion = self._step(row)
                label = self._score(emotion, gold, losses)
                engine.remember(active, tokens, label)
                active.position += 1
        finally:
            engine.finish(0)
            self._set_backbone_trainable(False)
        return losses

    def _step(self, row: StepRow) -> torch.Tensor:
        """The labeling step on ``row``: ``[n_labels]`` log-probabilities with the graph (at
        order 2 through the slot's last M writes, replayed first)."""
        if self.chain is None:
            return self.step.log_probs([row])[0]
        with twice_differentiable():
            self.chain.before(row)
            emotion = self.step.log_probs([row])[0]
            self.chain.after(row)
        return emotion

    def _score(self, emotion: torch.Tensor, gold: int, losses: dict[str, list[float]]) -> str:
        """Backpropagate the read's cross-entropy against ``gold`` (``emotion``: the read's
        log-probabilities); returns the predicted label (for a history of predicted labels)."""
        label = self.model.vocab.labels[int(emotion.argmax())]
        if gold < 0:
            return label
        loss = F.cross_entropy(emotion[None], torch.tensor([gold], device=emotion.device))
        (loss / self.config.utterances_per_step).backward()
        losses["read"].append(loss.item())
        run = self._run
        run.pending += 1
        if run.pending >= self.config.utterances_per_step:
            self._update()
            every = self.config.plain_every
            if run.streams and self.plain is not None and every and run.updates % every == 0:
                losses["plain"].append(self._plain_step())
        return label

    def _plain_step(self) -> float:
        """One batch of the plain ``dpm train`` loss, memory off."""
        plain = self.plain
        if plain is None:  # pragma: no cover - guarded by the caller
            return 0.0
        self.memory.use(None)
        picked, starts = sample_starts(
            self._run.streams,
            plain.window_tokens,
            plain.batch_size,
            self._run.rng,
            plain.aligned_fraction,
        )
        batch = make_batch(self.model.vocab, picked, starts, plain.window_tokens)
        loss, _parts = compute_loss(self.model, batch, plain, self.aux)
        loss.backward()
        self._update(count=False)
        return loss.item()

    def _update(self, *, count: bool = True) -> None:
        cfg, run = self.config, self._run
        lr = lr_at(run.updates, run.total_updates, cfg, run.minutes())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.nn.utils.clip_grad_norm_(self._params, cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if count:
            run.updates += 1
            run.pending = 0

    def _set_backbone_trainable(self, trainable: bool) -> None:
        for param in self.backbone_params:
            param.requires_grad_(trainable)

    # -- validation -----------------------------------------------------------------------------

    def validate(self, conversations: Sequence[TrainingConversation]) -> dict[str, dict]:
        """UA/WA (and expressive-free) of ``window`` and ``dpm`` reads with the current weights.

        Both are the labeling engine's, on a copy of the backbone as it is now (8 conversations
        at a time); the ``window`` read is the same backbone on the same ``n_r`` window with no
        memory, so the two differ by the memory only.
        """
        from dpm_worker.metrics import summarize

        labels = self.model.vocab.labels
        model = self.trained_model()
        out: dict[str, dict] = {}
        for mode in ("window", "dpm"):
            config = dataclasses.replace(self.labeling, mode=mode)
            rows = label_batched(model, config, [c.utterances for c in conversations], slots=8)
            gold, pred = [], []
            for conv, predictions in zip(conversations, rows, strict=True):
                for p, g in zip(predictions, conv.labels, strict=True):
                    if g >= 0:
                        gold.append(labels[g])
                        pred.append(p.emotion)
            summary = summarize(gold, pred, labels)
            out[mode] = {k: summary[k] for k in ("n", "wa", "ua", "wf1")}
        return out

    # -- results --------------------------------------------------------------------------------

    def trained_model(self) -> EmotionModel:
        """The trained backbone without the adapters (a copy, ready for ``save_model``)."""
        state = {
            key.replace(".base_layer", ""): value.detach().clone()
            for key, value in self.model.model.state_dict().items()
            if "lora_" not in key
        }
        clean = copy.deepcopy(self._clean_lm)
        clean.load_state_dict(state)
        for param in clean.parameters():
            param.requires_grad_(False)
        return dataclasses.replace(self.model, model=clean)

    def close(self) -> None:
        """Remove the adapters; the backbone is then frozen again (as after labeling)."""
        self.engine.close()
        self._set_backbone_trainable(False)
