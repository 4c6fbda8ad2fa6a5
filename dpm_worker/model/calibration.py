"""A model's calibration: one temperature on the emotion distribution it emits.

Why: a model trained with cross-entropy on a few speakers is overconfident where it has not
heard the speakers or the language (measured, dpm mode: dpm-default-v9 is >= 0.99 confident
on 74% of unseen RAVDESS actors' utterances and right on 84% of those; ECE 0.19), and
analytics users threshold on ``confidence``. A temperature ``T`` fitted on labelled speech of the target domain
(``dpm calibrate``, the NLL of the gold labels) makes confidence mean what it says:

    p_T ∝ p ** (1 / T)

applied to each utterance's emitted distribution, after the DPM step, the acoustic head and any
memory (``dpm_worker.memory.slots``). It is monotone, so the label (the argmax) never changes;
only ``confidence`` and the ``p_*`` columns do. ``T > 1`` softens, ``T < 1`` sharpens.

File in a model folder: ``calibration.json`` (``temperature``, ``mode``, ``fitted_on``,
``ece_before``, ``ece_after`` and anything else of how it was fitted), covered by the folder's
manifest and so by its fingerprint. A folder without it is uncalibrated and its outputs are
exactly what they were (no file, no change).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpm_worker.errors import ConfigError, ModelError

CALIBRATION_FILE = "calibration.json"
# The search range of fit_temperature: far beyond any temperature seen in practice.
T_RANGE = (0.02, 50.0)


@dataclass(frozen=True)
class Calibration:
    """How a model's emitted distributions are calibrated (module docstring).

    Args:
        temperature: T > 0 (1: no change).
        mode: the labeling mode it was fitted in (``dpm`` ...), for the record.
        fitted_on: the validation data it was fitted on, for the record.
        ece_before: ECE on that data without it.
        ece_after: ECE on that data with it.
        info: anything else of how it was fitted (kept in the file).
    """

    temperature: float
    mode: str | None = None
    fitted_on: str | None = None
    ece_before: float | None = None
    ece_after: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = self.temperature
        if (
            isinstance(t, bool)
            or not isinstance(t, int | float)
            or not (math.isfinite(t) and t > 0)
        ):
            raise ConfigError(f"calibration temperature must be a finite number > 0, got {t!r}")

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """``probs`` (``[C]`` or ``[N, C]``) at this temperature, float32."""
        return apply_temperature(probs, self.temperature)

    def to_dict(self) -> dict[str, Any]:
        body = {
            "temperature": float(self.temperature),
            "mode": self.mode,
            "fitted_on": self.fitted_on,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
        }
        return {**body, **self.info}

    def save(self, folder: str | Path) -> Path:
        """Write ``calibration.json`` into ``folder``; return its path."""
        path = Path(folder) / CALIBRATION_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def load_calibration(folder: str | Path) -> Calibration | None:
    """The calibration of a model folder, or None when it has none.

    Raises:
        ModelError: the file is unreadable or its temperature is not a number > 0.
    """
    path = Path(folder) / CALIBRATION_FILE
    if not path.exists():
        return None
    try:
        body = json.loads(path.read_text())
        named = ("temperature", "mode", "fitted_on", "ece_before", "ece_after")
        return Calibration(
            temperature=body["temperature"],
            mode=body.get("mode"),
            fitted_on=body.get("fitted_on"),
            ece_before=body.get("ece_before"),
            ece_after=body.get("ece_after"),
            info={k: v for k, v in body.items() if k not in named},
        )
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ConfigError) as exc:
        raise ModelError(f"{CALIBRATION_FILE} is invalid: {exc}", str(path)) from exc


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``p ** (1 / T)``, renormalized, in float64 and returned as float32 (``[C]`` or ``[N, C]``).

    Zeros stay zero; the order of the probabilities is kept, so the argmax is the same.
    """
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logp = np.log(p) / temperature
    logp -= logp.max(axis=-1, keepdims=True)
    q = np.exp(logp)
    return (q / q.sum(axis=-1, keepdims=True)).astype(np.float32)


def temperature_nll(probs: np.ndarray, gold: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the gold labels' indices under ``probs`` at ``T``."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None)) / temperature
    top = logp.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logp - top).sum(axis=1))
    return float(np.mean(log_z - logp[np.arange(len(gold)), gold]))


def fit_temperature(probs: np.ndarray, gold: np.ndarray, *, tol: float = 1e-4) -> float:
    """The T that minimizes the gold labels' NLL under ``p ** (1 / T)``.

    A golden-section search over ``log T`` in :data:`T_RANGE` (the NLL of a temperature is
    convex in ``1 / T``, so it has one minimum; the search stops within ``tol`` in ``log T``).

    Args:
        probs: ``[N, C]`` emitted distributions (uncalibrated).
        gold: ``[N]`` the gold labels' indices.
        tol: the width in ``log T`` at which the search stops.

    Raises:
        ConfigError: no rows, or shapes that do not agree.
    """
    probs = np.asarray(probs, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.int64)
    if probs.ndim != 2 or len(gold) != probs.shape[0] or len(gold) == 0:
        raise ConfigError(
            f"fit_temperature needs [N, C] probabilities and N gold labels, N > 0; got "
            f"{probs.shape} and {gold.shape}"
        )
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5.0) - 1.0) / 2.0

    def loss(log_t: float) -> float:
        return temperature_nll(probs, gold, math.exp(log_t))

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2.0)
