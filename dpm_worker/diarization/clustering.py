"""Who speaks in each chunk: clustering of chunk embeddings, then a Viterbi re-segmentation.

Clustering alone is not enough: a 1.5 s window hears the emotion as well as the voice, so a
speaker's angry chunks can sit closer to each other than to the same speaker's calm ones.
Two passes fix most of it:

1. :func:`cluster_embeddings`: k-means for a growing k while the clusters stay distinct
   voices (no two centroids as similar as ``threshold``) and each holds at least
   ``min_share`` of the speech (a few odd chunks are not a person). The embeddings are first
   whitened by the within-speaker covariance (``whitening.py``: fitted on RAVDESS actors
   09-18, where emotion is what varies), so the directions a voice moves in with its mood
   count for less.
2. :func:`viterbi_speakers`: an HMM over the chunks in time order whose states are the
   speakers; a chunk's score for a speaker is ``sharpness * cos(chunk, centroid)``, and a change
   of speaker costs ``switch_penalty`` (halved across a pause between speech regions, where
   turns usually change). Centroids are re-estimated from the path and the pass repeated.
"""

from __future__ import annotations

import numpy as np

from dpm_worker.errors import ConfigError


def cluster_embeddings(
    embeddings: np.ndarray,
    weights: np.ndarray,
    *,
    max_speakers: int,
    threshold: float,
    min_share: float,
    more_threshold: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Cluster unit embeddings ``[n, d]`` into 1..``max_speakers`` groups.

    k-means (:func:`kmeans`: k-means++, 10 starts, seeded) on the embeddings centred on their
    mean, for k = 2, 3, ... while every cluster holds at least ``min_share`` of the weight and
    no two clusters' centroids (uncentred) are as similar as ``threshold``; the last k that
    passed wins (none: one speaker).

    Args:
        embeddings: one unit-norm row per chunk.
        weights: each chunk's duration (seconds).
        max_speakers: the most clusters returned.
        threshold: two clusters whose centroids' cosine similarity reaches this are one voice.
        min_share: every cluster must hold at least this share of the total weight.
        seed: the k-means seed.

    Returns:
        ``[n]`` cluster ids 0..k-1 (ids in no particular order).
    """
    n = embeddings.shape[0]
    if max_speakers < 1:
        raise ConfigError(f"max_speakers must be >= 1, got {max_speakers}")
    best = np.zeros(n, np.int64)
    centred = embeddings - embeddings.mean(axis=0)
    total = float(weights.sum()) or 1.0
    for k in range(2, min(max_speakers, n) + 1):
        labels = kmeans(centred, k, seed=seed)
        ids = np.arange(k)
        shares = np.array([weights[labels == c].sum() / total for c in ids])
        cents = centroids(embeddings, labels, ids)
        similar = (cents @ cents.T)[np.triu_indices(k, 1)].max()
        limit = threshold if k == 2 or more_threshold is None else more_threshold
        if shares.min() < min_share or similar >= limit:
            break
        best = labels
    return best


def kmeans(points: np.ndarray, k: int, *, seed: int = 0, starts: int = 10) -> np.ndarray:
    """Lloyd's k-means from ``starts`` k-means++ seedings; the labels ``[n]`` of the lowest
    inertia. A conversation's few hundred chunks need no scikit-learn (whose per-call
    overhead showed as 15 % of diarization time in a profile, but side by side the whole
    diarizer's speed did not change measurably).
    """
    rng = np.random.default_rng(seed)
    data = points.astype(np.float64)
    sq = np.einsum("ij,ij->i", data, data)
    best, best_inertia = np.zeros(data.shape[0], np.int64), np.inf
    for _ in range(starts):
        centres = _plus_plus(data, sq, k, rng)
        labels = np.full(data.shape[0], -1, np.int64)
        for _ in range(100):
            dist = sq[:, None] - 2 * data @ centres.T + np.einsum("ij,ij->i", centres, centres)
            new = np.argmin(dist, axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            for c in range(k):  # an emptied cluster keeps its centre
                if (labels == c).any():
                    centres[c] = data[labels == c].mean(axis=0)
        inertia = float(dist[np.arange(data.shape[0]), labels].sum())
        if inertia < best_inertia - 1e-12:
            best, best_inertia = labels, inertia
    return best


def _plus_plus(data: np.ndarray, sq: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability proportional to the squared
    distance to the nearest centre so far."""
    centres = [data[int(rng.integers(data.shape[0]))]]
    for _ in range(1, k):
        near = np.min(sq[:, None] - 2 * data @ np.array(centres).T
                      + np.array([c @ c for c in centres]), axis=1)  # fmt: skip
        near = np.maximum(near, 0.0)
        total = near.sum()
        pick = rng.choice(data.shape[0], p=near / total) if total > 0 else rng.integers(len(data))
        centres.append(data[int(pick)])
    return np.array(centres)


def centroids(embeddings: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Unit-norm mean embedding of each id in ``ids``: ``[len(ids), d]``."""
    cents = np.stack([embeddings[labels == c].mean(axis=0) for c in ids])
    return cents / np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)


def viterbi_speakers(
    embeddings: np.ndarray,
    labels: np.ndarray,
    after_pause: np.ndarray,
    *,
    sharpness: float,
    switch_penalty: float,
    iterations: int = 2,
) -> np.ndarray:
    """Re-segment the chunks with an HMM whose states are the clusters of ``labels``.

    Args:
        embeddings: unit chunk embeddings ``[n, d]`` in time order.
        labels: initial cluster ids ``[n]`` (0..k-1).
        after_pause: ``[n]`` bool, True where a chunk starts a new speech region.
        sharpness: scale of the cosine score.
        switch_penalty: cost of a speaker change between adjacent chunks (half after a pause).
        iterations: passes, each re-estimating the centroids from the previous path.

    Returns:
        ``[n]`` speaker ids; a cluster that no chunk keeps disappears (ids renumbered 0..k-1).
    """
    path = labels.copy()
    for _ in range(iterations):
        ids = np.unique(path)
        if ids.size < 2:
            break
        scores = sharpness * (embeddings @ centroids(embeddings, path, ids).T)  # [n, k]
        path = ids[_best_path(scores, after_pause, switch_penalty)]
    return np.unique(path, return_inverse=True)[1].astype(np.int64)


def _best_path(scores: np.ndarray, after_pause: np.ndarray, penalty: float) -> np.ndarray:
    n, k = scores.shape
    back = np.zeros((n, k), np.int64)
    total = scores[0].copy()
    stay = np.eye(k, dtype=bool)
    for t in range(1, n):
        cost = penalty * (0.5 if after_pause[t] else 1.0)
        moves = total[:, None] - np.where(stay, 0.0, cost)  # [from, to]
        back[t] = np.argmax(moves, axis=0)
        total = moves[back[t], np.arange(k)] + scores[t]
    path = np.zeros(n, np.int64)
    path[-1] = int(np.argmax(total))
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path
