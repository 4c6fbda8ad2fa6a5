"""How a conversation is labeled (``LabelingConfig``) and the temporary LoRA memory's
hyperparameters (``MemoryConfig``), with their allowed values.

Kept apart from the mechanism (``lora.py``, ``labeling.py``) so that configuration code (YAML
loading, CLI overrides) reads and validates them without the adapter's mechanics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dpm_worker.errors import ConfigError
from dpm_worker.model import HISTORY_FORMATS

WRITE_TARGETS = ("audio", "audio+emotion", "audio+prediction", "prior")
SCOPES = ("conversation", "speaker")
PRIOR_INPUTS = ("speaker", "history")
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class MemoryConfig:
    """Hyperparameters of the temporary LoRA and its optimizer.

    The paper (arXiv 2507.09076) and Temp-LoRA (arXiv 2401.11504) use, at 7B scale: LoRA r=64
    on all linear layers, AdamW, lr 5e-5, 2 steps per chunk, constant lr after a short warm-up.
    The defaults are the ones measured best on the dev corpus with the default model
    (docs/dpm.md has every measurement): a speaker-scoped ``prior`` memory, r=8 on all
    projections, 2 plain-SGD steps at lr 0.3 per utterance. The paper's variant is
    ``write_target="audio"`` with ``optimizer="adamw"`` and a small lr (1e-4 measured here,
    5e-5 in the paper), 1-2 steps: on this small backbone it changed nothing.

    Args:
        rank: LoRA rank r.
        alpha: LoRA alpha; the update is scaled by ``alpha / rank``.
        target_modules: names of the linear layers that get an adapter.
        lr: the optimizer's learning rate after warm-up.
        optimizer: ``adamw`` (the paper) or ``sgd``. AdamW's first steps move every weight
            by about ``lr`` whatever the error (a sign step); plain SGD moves the memory in
            proportion to how wrong it is, so a ``prior`` follows the speaker's reads like a
            running average.
        betas: AdamW betas.
        weight_decay: weight decay (decoupled in AdamW; pulls the memory back toward zero).
        warmup_steps: linear warm-up, counted in optimizer steps within one conversation
            (per speaker in ``speaker`` scope); 0 means the full lr from the first step.
        steps_per_utterance: k, the optimizer steps of each write.
        write_target: ``audio`` trains on the utterance's audio tokens; ``audio+emotion`` also
            trains on the emotion tokens the history window carries (previously predicted
            labels; needs ``history_labels="predicted"``); ``audio+prediction`` ("sentence-level
            emotion encoding", issue 4's studies) reads the emotion first, from the memory of
            the earlier turns, then writes the audio loss plus a confidence-weighted
            cross-entropy toward that prediction at ``<audio_end>``. ``prior`` (a speaker's
            emotional state kept in parameters, see :class:`dpm_worker.memory.step.PriorWrite`):
            the adapter learns, at the utterance's speaker token, the emotions the backbone
            read in that speaker's turns; the read multiplies the backbone's own read of the
            utterance by that prior.
        emotion_weight: lambda of the ``audio+prediction`` emotion term.
        prior_weight: beta of ``prior``: emitted log-probabilities are the backbone's read plus
            beta times the prior's log-probabilities, renormalised. 0.3 since dpm-default-v6,
            tuned on real speech (RAVDESS actors 01-18): at 1.0 the prior of a speaker's past
            reads outvoted the current utterance and lowered UA by 0.09-0.14.
        prior_input: where ``prior`` reads and writes the prior: ``speaker``, the speaker token
            alone (the prior lives in the parameters only: a per-speaker state, the same
            whatever was said last), or ``history``, the speaker token after the history
            window (the prior also depends on the context).
        read_gate: when the backbone alone (memory off, same window) is at least this confident,
            its answer is emitted instead of the memory's; 1.0 always emits the memory's read.
            Measured here: a memory strong enough to fix non-expressive utterances also
            overrides clear expressive ones; this keeps those. Costs one more forward pass per
            utterance when below 1.0.
        confidence_gate: ``audio+prediction`` writes the emotion term only when the read's
            top probability reaches this (a confident prediction is less likely an error).
        scope: ``conversation`` (one adapter, the paper) or ``speaker`` (one per speaker).
        seed: seeds the A matrices (B starts at 0, so a reset memory is the backbone); the
            same seed gives the same rows.
    """

    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    lr: float = 0.3
    optimizer: str = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    steps_per_utterance: int = 2
    write_target: str = "prior"
    emotion_weight: float = 3.0
    confidence_gate: float = 0.75
    read_gate: float = 1.0
    prior_weight: float = 0.3
    prior_input: str = "speaker"
    scope: str = "speaker"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"memory.rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ConfigError(f"memory.alpha must be > 0, got {self.alpha}")
        modules = tuple(self.target_modules)
        if not modules or not all(isinstance(m, str) and m for m in modules):
            raise ConfigError(f"memory.target_modules must be non-empty names, got {modules!r}")
        object.__setattr__(self, "target_modules", modules)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"memory.lr must be a finite number > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"memory.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"
            )
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"memory.betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", betas)
        if self.weight_decay < 0:
            raise ConfigError(f"memory.weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ConfigError(f"memory.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.steps_per_utterance < 0:
            raise ConfigError(
                f"memory.steps_per_utterance must be >= 0, got {self.steps_per_utterance}"
            )
        if self.write_target not in WRITE_TARGETS:
            raise ConfigError(
                f"memory.write_target must be one of {WRITE_TARGETS}, got {self.write_target!r}"
            )
        if not (math.isfinite(self.emotion_weight) and self.emotion_weight >= 0):
            raise ConfigError(f"memory.emotion_weight must be >= 0, got {self.emotion_weight}")
        if not 0.0 <= self.confidence_gate <= 1.0:
            raise ConfigError(
                f"memory.confidence_gate must be in [0, 1], got {self.confidence_gate}"
            )
        if not 0.0 <= self.read_gate <= 1.0:
            raise ConfigError(f"memory.read_gate must be in [0, 1], got {self.read_gate}")
        if not (math.isfinite(self.prior_weight) and self.prior_weight >= 0):
            raise ConfigError(f"memory.prior_weight must be >= 0, got {self.prior_weight}")
        if self.prior_input not in PRIOR_INPUTS:
            raise ConfigError(
                f"memory.prior_input must be one of {PRIOR_INPUTS}, got {self.prior_input!r}"
            )
        if self.scope not in SCOPES:
            raise ConfigError(f"memory.scope must be one of {SCOPES}, got {self.scope!r}")


MODES = ("utterance", "window", "full", "dpm", "prior-ema")
LONG_UTTERANCES = ("chunks", "truncate")
# How a read treats the history window (dpm_worker/memory/cache.py).
HISTORY_CACHES = ("recompute", "reuse")


@dataclass(frozen=True)
class LabelingConfig:
    """How a conversation is labeled.

    Args:
        mode: ``utterance``, ``window``, ``full`` or ``dpm`` (the product's default).
        window_tokens: n_r, the history tokens in context in ``window`` and ``dpm`` modes
            (the paper: 1024 on IEMOCAP, 256 on MELD).
        history_labels: ``none`` keeps emotion tokens out of the history; ``predicted`` appends
            each predicted emotion token after its ``<audio_end>``; None (default) uses the
            format the model was trained with (``model.history_labels``).
        memory: the temporary LoRA's hyperparameters (``dpm`` mode only).
        seed: seeds torch's global RNG at the start of each conversation.
        ema_rate: a, the weight of the newest read in ``prior-ema``'s running average.
        ema_weight: beta, how much ``prior-ema``'s average weighs against the current read.
        long_utterances: how an utterance longer than the model's context is read,
            ``chunks`` or ``truncate`` (module docstring).
        history_cache: ``recompute`` (default) runs the whole history window through the
            model for every read, exactly as one conversation alone; ``reuse`` keeps each
            conversation's keys and values of its history and computes only the new tokens,
            where the read runs with the memory off (about 2x faster; a sliding window of
            states, not tokens: dpm_worker/memory/cache.py gives the measured difference).
    """

    mode: str = "dpm"
    window_tokens: int = 256
    history_labels: str | None = None
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    seed: int = 0
    ema_rate: float = 0.7
    ema_weight: float = 1.0
    long_utterances: str = "chunks"
    history_cache: str = "recompute"

    def __post_init__(self) -> None:
        if self.history_cache not in HISTORY_CACHES:
            raise ConfigError(
                f"history_cache must be one of {HISTORY_CACHES}, got {self.history_cache!r}"
            )
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.long_utterances not in LONG_UTTERANCES:
            raise ConfigError(
                f"long_utterances must be one of {LONG_UTTERANCES}, got {self.long_utterances!r}"
            )
        if self.window_tokens < 0:
            raise ConfigError(f"window_tokens must be >= 0, got {self.window_tokens}")
        if self.history_labels is not None and self.history_labels not in HISTORY_FORMATS:
            raise ConfigError(
                f"history_labels must be one of {HISTORY_FORMATS}, got {self.history_labels!r}"
            )
        if not 0.0 < self.ema_rate <= 1.0:
            raise ConfigError(f"ema_rate must be in (0, 1], got {self.ema_rate!r}")
        if not 0.0 <= self.ema_weight <= 10.0:
            raise ConfigError(f"ema_weight must be in [0, 10], got {self.ema_weight!r}")
        if not isinstance(self.memory, MemoryConfig):
            raise ConfigError(f"memory must be a MemoryConfig, got {type(self.memory).__name__}")
        if self.memory.write_target == "audio+emotion" and self.history_labels == "none":
            raise ConfigError(
                "memory.write_target 'audio+emotion' trains on the emotion tokens of the history "
                f"and needs history_labels='predicted', got {self.history_labels!r}"
            )
