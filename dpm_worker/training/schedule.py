"""The learning-rate schedule shared by ``dpm train`` and the memory loop."""

from __future__ import annotations

import math
from typing import Protocol


class LrSchedule(Protocol):
    """What :func:`lr_at` reads from a config (TrainConfig, MemoryLoopConfig)."""

    @property
    def lr(self) -> float: ...
    @property
    def warmup_steps(self) -> int: ...
    @property
    def min_lr_ratio(self) -> float: ...
    @property
    def max_minutes(self) -> float: ...


def lr_at(step: int, total: int, config: LrSchedule, minutes: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio``.

    Progress is the larger of steps done and budget used (``minutes / max_minutes``), so a run
    cut short by its wall-time budget on a busy machine still ends with a decayed rate.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    if config.max_minutes:
        progress = max(progress, minutes / config.max_minutes)
    progress = min(1.0, progress)
    return config.lr * (
        config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    )
