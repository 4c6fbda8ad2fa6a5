"""The directions in which one speaker's embeddings vary most, projected away before clustering.

A speaker's angry and calm chunks can sit farther apart than two speakers' calm ones: emotion
moves the GE2E embedding. Nuisance attribute projection (NAP, Solomonoff et al. 2005) removes
the top eigenvectors of the within-speaker scatter, measured on acted emotional speech where
emotion is what varies within a speaker: every chunk of RAVDESS actors 01-18 (actors 19-24 and
EMOVO, the benchmark's speakers, are never used), embedded as ``diarize`` embeds a chunk.
Measured on two-speaker conversations of RAVDESS actors 01-08 with actors 09-18's
directions, k-means at the true k: DER 13.4 % without, 7.1 % with 10 directions
(same-gender pairs 19.4 % -> 12.6 %); docs/diarization.md.

The shipped file ``dpm_worker/assets/diarization/nuisance.npy`` (``[256, 10]`` float32) was
made by ``python -m pipelines.diarize_fit --ravdess RAVDESS_ROOT`` (deterministic: no seed).
RAVDESS is CC BY-NC-SA 4.0: the file carries its terms.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from dpm_worker.errors import ConfigError, ModelError

NUISANCE_PATH = Path(__file__).resolve().parents[1] / "assets" / "diarization" / "nuisance.npy"


def fit_nuisance(embeddings: np.ndarray, speakers: np.ndarray, dims: int) -> np.ndarray:
    """The top ``dims`` eigenvectors ``[d, dims]`` of the within-speaker scatter.

    Args:
        embeddings: ``[n, d]`` chunk embeddings.
        speakers: ``[n]`` their speakers.
        dims: how many directions to keep.
    """
    if not 0 < dims < embeddings.shape[1]:
        raise ConfigError(f"dims must be in (0, {embeddings.shape[1]}), got {dims}")
    scatter = np.zeros((embeddings.shape[1],) * 2)
    for speaker in np.unique(speakers):
        own = embeddings[speakers == speaker].astype(np.float64)
        own = own - own.mean(axis=0)
        scatter += own.T @ own
    _, vectors = np.linalg.eigh(scatter / embeddings.shape[0])
    return np.ascontiguousarray(vectors[:, ::-1][:, :dims]).astype(np.float32)


@lru_cache(maxsize=1)
def load_nuisance(path: Path = NUISANCE_PATH) -> np.ndarray:
    """The shipped nuisance directions ``[256, k]`` (orthonormal columns).

    Raises:
        ModelError: the file is missing or not a ``[256, k]`` array.
    """
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the nuisance directions: {exc}", str(path)) from None
    if vectors.ndim != 2 or vectors.shape[0] != 256 or vectors.shape[1] >= 256:
        raise ModelError(f"nuisance directions need shape [256, k], got {vectors.shape}", str(path))
    return vectors.astype(np.float32)


def project(embeddings: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Remove the ``vectors`` directions from ``embeddings`` ``[n, d]`` and re-normalize."""
    kept = embeddings - (embeddings @ vectors) @ vectors.T
    return kept / np.maximum(np.linalg.norm(kept, axis=1, keepdims=True), 1e-12)
