"""Within-speaker whitening of the speaker embeddings, fitted on speakers the bench never hears.

A speaker's angry and calm chunks can sit farther apart than two speakers' calm ones: emotion
moves the GE2E embedding. Within-class covariance normalization (WCCN, Hatch et al. 2006)
rescales the space so that the directions in which one speaker's chunks vary are shrunk and
the rest kept: ``y = (x - mean) @ W^(-1/2)``, re-normalized, with ``W`` the within-speaker
covariance shrunk towards its mean variance (``shrink``) because a few hundred chunks do not
estimate 256 x 256 well. It replaces the earlier nuisance projection (the top 10 within-speaker
directions removed outright), which it contains as a limit.

Fitted on every 4-class clip of RAVDESS actors 09-18 (683 chunks), embedded as ``diarize``
embeds a chunk. Actors 01-08 are kept apart: the diarizer's thresholds were chosen on their
conversations, with this very transform. Actors 19-24 and EMOVO, the benchmark's speakers, are
never used. On the conversations of actors 01-08, k-means at the true number of speakers:
DER 8.8 % with the nuisance projection (fitted on the same actors), 4.6 % with this at
``shrink`` 0.3 (same-gender pairs 14.5 % -> 5.1 %); with the number of speakers decided
(shrink 0.7, threshold 0.7): 6.1 % against 9.7 % before; docs/diarization.md.

The shipped ``dpm_worker/assets/diarization/whitening.npz`` (``mean`` [256], ``transform``
[256, 256], float32) was made by ``python -m pipelines.diarize_fit --ravdess RAVDESS_ROOT``
(actors 9-18 by default; deterministic). RAVDESS is CC BY-NC-SA 4.0: the file carries its terms.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from dpm_worker.errors import ConfigError, ModelError

WHITENING_PATH = Path(__file__).resolve().parents[1] / "assets" / "diarization" / "whitening.npz"
DIM = 256


def fit_whitening(
    embeddings: np.ndarray, speakers: np.ndarray, shrink: float
) -> tuple[np.ndarray, np.ndarray]:
    """The mean ``[d]`` and transform ``[d, d]`` that whiten the within-speaker scatter.

    Args:
        embeddings: ``[n, d]`` chunk embeddings.
        speakers: ``[n]`` their speakers (at least two).
        shrink: weight in [0, 1) of the isotropic part: ``W = (1 - shrink) S + shrink tr(S)/d I``
            (0.7 chosen with the diarizer's threshold on conversations of RAVDESS actors
            01-08, fitted on 09-18: 0.3, 0.5, 0.7 and 0.85 tried).
    """
    if not 0.0 <= shrink < 1.0:
        raise ConfigError(f"shrink must be in [0, 1), got {shrink}")
    if np.unique(speakers).size < 2:
        raise ConfigError(f"whitening needs chunks of two speakers or more, got {set(speakers)}")
    data = embeddings.astype(np.float64)
    d = data.shape[1]
    scatter = np.zeros((d, d))
    for speaker in np.unique(speakers):
        own = data[speakers == speaker]
        own = own - own.mean(axis=0)
        scatter += own.T @ own
    scatter /= data.shape[0]
    scatter = (1.0 - shrink) * scatter + shrink * np.trace(scatter) / d * np.eye(d)
    values, vectors = np.linalg.eigh(scatter)
    transform = (vectors / np.sqrt(values)) @ vectors.T
    return data.mean(axis=0).astype(np.float32), transform.astype(np.float32)


@lru_cache(maxsize=1)
def load_whitening(path: Path = WHITENING_PATH) -> tuple[np.ndarray, np.ndarray]:
    """The shipped ``(mean [256], transform [256, 256])``.

    Raises:
        ModelError: the file is missing or its arrays do not have those shapes.
    """
    try:
        with np.load(path, allow_pickle=False) as found:
            mean, transform = found["mean"], found["transform"]
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"cannot read the whitening transform: {exc}", str(path)) from None
    if mean.shape != (DIM,) or transform.shape != (DIM, DIM):
        raise ModelError(
            f"whitening needs mean [256] and transform [256, 256], got {mean.shape} and "
            f"{transform.shape}",
            str(path),
        )
    return mean.astype(np.float32), transform.astype(np.float32)


def whiten(embeddings: np.ndarray, mean: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """``(embeddings - mean) @ transform`` for rows ``[n, d]``, re-normalized to unit length."""
    # einsum, not BLAS: a [n, 256] x [256, 256] product is large enough for OpenBLAS to start
    # its threads, which on a busy machine took 39 ms per conversation against 1 ms here.
    found = np.einsum("nd,de->ne", embeddings - mean, transform)
    return found / np.maximum(np.linalg.norm(found, axis=1, keepdims=True), 1e-12)
