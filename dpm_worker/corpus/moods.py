"""The speakers' mood chain, shared by the espeak-ng generator and the randomized one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dpm_worker.corpus.schema import DEFAULT_LABELS

if TYPE_CHECKING:
    from dpm_worker.corpus.synth_config import SynthConfig


def next_mood(rng: np.random.Generator, mood: str, partner_mood: str, config: SynthConfig) -> str:
    """One step of a speaker's mood chain: stay, follow the partner, or jump elsewhere."""
    if rng.random() < config.mood_stay:
        return mood
    if rng.random() < config.mood_pull:
        return partner_mood
    others = [label for label in DEFAULT_LABELS if label != mood]
    return others[int(rng.integers(len(others)))]
