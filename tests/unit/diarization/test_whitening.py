"""The within-speaker whitening: fitted on planted speakers whose voices move along a mood
direction, it makes that direction count for less; the shipped asset has the pinned shapes."""

from __future__ import annotations

import numpy as np
import pytest

from dpm_worker.diarization import fit_whitening
from dpm_worker.diarization.whitening import load_whitening, whiten
from dpm_worker.errors import ConfigError


def _voices(rng: np.random.Generator, speakers: int, per: int, mood: np.ndarray) -> tuple:
    """Unit embeddings: a part all voices share (GE2E's embeddings sit in one cone), a voice
    each, a large shift along ``mood`` and small noise."""
    rows, who = [], []
    shared = np.ones(256) / 16.0
    for s in range(speakers):
        voice = rng.normal(size=256)
        voice = shared + 0.4 * voice / np.linalg.norm(voice)
        swing = rng.uniform(-1.0, 1.0, size=(per, 1)) * mood
        rows.append(voice + swing + 0.05 * rng.normal(size=(per, 256)))
        who += [s] * per
    found = np.concatenate(rows)
    return found / np.linalg.norm(found, axis=1, keepdims=True), np.array(who)


def test_whitening_shrinks_the_within_speaker_direction():
    rng = np.random.default_rng(0)
    mood = rng.normal(size=256)
    mood /= np.linalg.norm(mood)
    fit, who = _voices(rng, 12, 30, mood)
    mean, transform = fit_whitening(fit, who, shrink=0.3)
    np.testing.assert_allclose(transform, transform.T, atol=1e-5)  # W^(-1/2) is symmetric
    # Held-out: one speaker at both ends of the mood, and another speaker at the calm end.
    held, held_who = _voices(np.random.default_rng(1), 2, 40, mood)
    calm = held @ mood < 0
    a_calm = held[(held_who == 0) & calm].mean(axis=0)
    a_upset = held[(held_who == 0) & ~calm].mean(axis=0)
    b_calm = held[(held_who == 1) & calm].mean(axis=0)

    def cos(x: np.ndarray, y: np.ndarray) -> float:
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

    assert cos(a_calm, a_upset) < cos(a_calm, b_calm)  # raw: the mood outweighs the voice
    w = whiten(np.stack([a_calm, a_upset, b_calm]), mean, transform)
    assert np.allclose(np.linalg.norm(w, axis=1), 1.0, atol=1e-5)
    assert cos(w[0], w[1]) > cos(w[0], w[2]) + 0.2  # whitened: the voice outweighs the mood


def test_whitening_checks_its_inputs():
    fit, _ = _voices(np.random.default_rng(2), 2, 5, np.eye(256)[0])
    with pytest.raises(ConfigError, match="shrink must be in"):
        fit_whitening(fit, np.repeat([0, 1], 5), shrink=1.0)
    with pytest.raises(ConfigError, match="two speakers or more"):
        fit_whitening(fit, np.zeros(10), shrink=0.3)


def test_shipped_whitening_loads():
    mean, transform = load_whitening()
    assert mean.shape == (256,) and transform.shape == (256, 256)
    assert np.isfinite(transform).all()
    np.testing.assert_allclose(transform, transform.T, atol=1e-4)
