"""Emotion-recognition metrics as the SER literature reports them, and intervals over conversations.

- WA (weighted accuracy): plain accuracy over utterances.
- UA (unweighted accuracy): mean per-class recall over the classes present in the gold labels.
- WF1: per-class F1 weighted by gold support.
- ECE (expected calibration error): the top label's confidence against how often it is right,
  in ``ECE_BINS`` equal-width confidence bins, ``sum_b n_b / N * |accuracy_b - confidence_b|``.
  0 when a confidence of 0.9 is right 90% of the time; what a user who thresholds the
  ``confidence`` column relies on.

Utterances of one conversation are not independent (a speaker's mood persists), so intervals
resample whole conversations (a cluster bootstrap). Everything a resample needs is the sum of
per-conversation confusion matrices (or, for ECE, of per-conversation bin sums), which makes
thousands of resamples one matrix product.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dpm_worker.errors import LabelError

ECE_BINS = 10


def confusion_matrix(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """``[C, C]`` counts; rows are gold labels, columns predictions, in the order of ``labels``."""
    if len(gold) != len(pred):
        raise LabelError(f"gold has {len(gold)} labels but pred has {len(pred)}")
    index = {name: i for i, name in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for g, p in zip(gold, pred, strict=True):
        if g not in index or p not in index:
            bad = g if g not in index else p
            raise LabelError(f"label {bad!r} is not in the label set {tuple(labels)}")
        cm[index[g], index[p]] += 1
    return cm


def wa_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Accuracy of one ``[C, C]`` matrix or a stack ``[..., C, C]`` (nan when empty)."""
    total = cm.sum(axis=(-2, -1))
    correct = np.trace(cm, axis1=-2, axis2=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def ua_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Mean recall over the classes with gold support, for a matrix or a stack of them."""
    support = cm.sum(axis=-1)
    hits = np.diagonal(cm, axis1=-2, axis2=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / np.maximum(support, 1), np.nan)
        present = (support > 0).sum(axis=-1)
        return np.where(present > 0, np.nansum(recall, axis=-1) / np.maximum(present, 1), np.nan)


def per_class(cm: np.ndarray, labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class."""
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(labels):
        tp = float(cm[i, i])
        support = float(cm[i].sum())
        predicted = float(cm[:, i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(support)}
    return out


def weighted_f1(cm: np.ndarray) -> float:
    """F1 per class, averaged with the gold supports as weights."""
    support = cm.sum(axis=1).astype(float)
    if support.sum() == 0:
        return float("nan")
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return float((f1 * support).sum() / support.sum())


def summarize(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict:
    """WA, UA, WF1, per-class scores and the confusion matrix of one set of predictions."""
    cm = confusion_matrix(gold, pred, labels)
    return {
        "n": int(cm.sum()),
        "wa": float(wa_from_confusion(cm)),
        "ua": float(ua_from_confusion(cm)),
        "wf1": weighted_f1(cm),
        "per_class": per_class(cm, labels),
        "confusion": cm.tolist(),
    }


def calibration_bins(
    probs: np.ndarray, gold: Sequence[int] | np.ndarray, n_bins: int = ECE_BINS
) -> np.ndarray:
    """``[n_bins, 3]`` sums per top-label confidence bin: count, confidence, correct.

    Args:
        probs: ``[N, C]`` emitted distributions.
        gold: ``[N]`` the gold label's index in each row's label order.
        n_bins: equal-width bins over [0, 1] (a confidence of exactly 1 is in the last).
    """
    gold_a = np.asarray(gold, dtype=np.int64)
    if n_bins < 1:
        raise LabelError(f"n_bins must be >= 1, got {n_bins}")
    out = np.zeros((n_bins, 3), dtype=np.float64)
    if len(gold_a) == 0:
        return out
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(gold_a):
        raise LabelError(f"probs of shape {probs.shape} for {len(gold_a)} gold labels")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == gold_a).astype(np.float64)
    which = np.clip((confidence * n_bins).astype(np.int64), 0, n_bins - 1)
    np.add.at(out, which, np.stack([np.ones_like(confidence), confidence, correct], axis=1))
    return out


def ece_from_bins(bins: np.ndarray) -> np.ndarray:
    """ECE of one ``[B, 3]`` bin table or a stack ``[..., B, 3]`` (nan when empty)."""
    total = bins[..., 0].sum(axis=-1)
    gap = np.abs(bins[..., 2] - bins[..., 1]).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, gap / np.maximum(total, 1e-300), np.nan)


def expected_calibration_error(
    probs: np.ndarray, gold: Sequence[int] | np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE of the top label (module docstring) of ``[N, C]`` distributions against the gold
    labels' indices; nan when there are none."""
    return float(ece_from_bins(calibration_bins(probs, gold, n_bins)))


def group_calibration_bins(
    groups: Sequence[str],
    probs: np.ndarray,
    gold: Sequence[int] | np.ndarray,
    n_bins: int = ECE_BINS,
) -> np.ndarray:
    """One ``[B, 3]`` bin table per group (conversation), in first-seen order: ``[G, B, 3]``,
    for :func:`bootstrap_interval` with ``metric="ece"``."""
    keys: dict[str, int] = {}
    for g in groups:
        keys.setdefault(g, len(keys))
    index = np.asarray([keys[g] for g in groups], dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    gold_a = np.asarray(gold, dtype=np.int64)
    tables = [
        calibration_bins(probs[index == k], gold_a[index == k], n_bins) for k in keys.values()
    ]
    return np.stack(tables) if tables else np.zeros((0, n_bins, 3))


def position_bins(max_position: int, width: int = 10) -> list[tuple[int, int]]:
    """``[(0, width), (width, 2*width), ...]`` covering positions ``0..max_position``."""
    if width < 1:
        raise LabelError(f"bin width must be >= 1, got {width}")
    return [(lo, lo + width) for lo in range(0, max_position + 1, width)]


def by_position(
    positions: Sequence[int],
    gold: Sequence[str],
    pred: Sequence[str],
    labels: Sequence[str],
    bins: Sequence[tuple[int, int]],
) -> list[dict]:
    """WA and UA of the utterances whose dialogue position falls in each ``[from, to)`` bin."""
    pos = np.asarray(positions)
    gold_a, pred_a = np.asarray(gold, dtype=object), np.asarray(pred, dtype=object)
    rows = []
    for lo, hi in bins:
        sel = (pos >= lo) & (pos < hi)
        cm = confusion_matrix(list(gold_a[sel]), list(pred_a[sel]), labels)
        rows.append(
            {
                "from": int(lo),
                "to": int(hi),
                "n": int(sel.sum()),
                "wa": float(wa_from_confusion(cm)),
                "ua": float(ua_from_confusion(cm)),
            }
        )
    return rows


def group_confusions(
    groups: Sequence[str], gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """One confusion matrix per group (conversation): keys in first-seen order, ``[G, C, C]``."""
    keys: dict[str, int] = {}
    for g in groups:
        keys.setdefault(g, len(keys))
    index = {name: i for i, name in enumerate(labels)}
    cms = np.zeros((len(keys), len(labels), len(labels)), dtype=np.int64)
    for grp, g, p in zip(groups, gold, pred, strict=True):
        cms[keys[grp], index[g], index[p]] += 1
    return list(keys), cms


def bootstrap_interval(
    cms_a: np.ndarray,
    cms_b: np.ndarray | None = None,
    metric: str = "ua",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Percentile bootstrap over groups of a metric, or of the difference ``a - b``.

    Args:
        cms_a: ``[G, C, C]`` per-group confusion matrices of system a (``[G, B, 3]`` bin
            tables of :func:`group_calibration_bins` for ``ece``).
        cms_b: the same groups' matrices of system b (paired resampling), or None.
        metric: ``ua``, ``wa`` or ``ece``.
        n_boot: resamples.
        seed: the resampling seed.
        level: coverage of the interval.

    Returns:
        ``{"value", "lo", "hi"}``: the point estimate on all groups and the interval.
    """
    fn = {"ua": ua_from_confusion, "wa": wa_from_confusion, "ece": ece_from_bins}.get(metric)
    if fn is None:
        raise LabelError(f"metric must be 'ua', 'wa' or 'ece', got {metric!r}")
    n_groups = cms_a.shape[0]
    if n_groups == 0:
        return {"value": float("nan"), "lo": float("nan"), "hi": float("nan")}
    rng = np.random.default_rng(seed)
    # Multinomial counts = how often each group is drawn in a resample of n_groups groups.
    weights = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
    flat_a = cms_a.reshape(n_groups, -1).astype(np.float64)
    shape = cms_a.shape[1:]

    def stat(flat: np.ndarray) -> tuple[float, np.ndarray]:
        full = fn(flat.sum(axis=0).reshape(shape))
        boots = fn((weights @ flat).reshape(n_boot, *shape))
        return float(full), boots

    value, boots = stat(flat_a)
    if cms_b is not None:
        if cms_b.shape != cms_a.shape:
            raise LabelError(f"paired matrices differ in shape: {cms_a.shape} vs {cms_b.shape}")
        value_b, boots_b = stat(cms_b.reshape(n_groups, -1).astype(np.float64))
        value, boots = value - value_b, boots - boots_b
    tail_mass = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(boots, [tail_mass, 1.0 - tail_mass])
    return {"value": value, "lo": float(lo), "hi": float(hi)}
