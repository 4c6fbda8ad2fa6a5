"""Diarization error rate (DER) on a 1 ms grid, the NIST definition.

DER = (missed speech + false alarm + speaker confusion) / reference speech, in seconds, where
at each instant with ``n_ref`` reference and ``n_hyp`` hypothesis speakers: missed is
``max(0, n_ref - n_hyp)``, false alarm ``max(0, n_hyp - n_ref)``, confusion
``min(n_ref, n_hyp) - n_correct`` (``n_correct``: reference speakers whose mapped hypothesis
speaker also speaks), the mapping being the one-to-one assignment of hypothesis to reference
speakers that maximizes their overlap (Hungarian). Overlapped speech is scored. A collar of
``collar_s`` on each side of every reference boundary is left out (NIST md-eval's ``-c 0.25``
is ``collar_s=0.25``; ``pyannote.metrics`` takes the collar's whole width, ``collar=0.5``).
The benchmark computes DER with ``pyannote.metrics``; this module is for tests and for hosts
without it (a test holds the two together).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dpm_worker.corpus.schema import SpeakerTurn
from dpm_worker.errors import ConfigError

_STEP_S = 0.001


def diarization_error(
    reference: Sequence[SpeakerTurn],
    hypothesis: Sequence[SpeakerTurn],
    *,
    duration_s: float,
    collar_s: float = 0.25,
) -> dict[str, float]:
    """Score a hypothesis against a reference over ``[0, duration_s)``.

    Args:
        reference: the true turns.
        hypothesis: the turns to score (speaker names need not match the reference's).
        duration_s: the length of the scored recording.
        collar_s: seconds left out on each side of each reference turn's start and end.

    Returns:
        ``missed``, ``false_alarm``, ``confusion``, ``total`` (reference speech, seconds) and
        ``der`` (their ratio; 0 when there is no reference speech).
    """
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ConfigError(f"duration_s must be > 0, got {duration_s!r}")
    if not (math.isfinite(collar_s) and collar_s >= 0):
        raise ConfigError(f"collar_s must be >= 0, got {collar_s!r}")
    n = round(duration_s / _STEP_S)
    ref = _activity(reference, n)
    hyp = _activity(hypothesis, n)
    scored = np.ones(n, bool)
    for turn in reference:
        for t in (turn.start_s, turn.end_s):
            scored[_frame(t - collar_s, n) : _frame(t + collar_s, n)] = False
    ref, hyp = ref[:, scored], hyp[:, scored]
    n_ref, n_hyp = ref.sum(axis=0), hyp.sum(axis=0)
    from scipy.optimize import linear_sum_assignment

    correct = np.zeros(ref.shape[1], np.int64)
    if ref.shape[0] and hyp.shape[0]:
        overlap = ref.astype(np.int64) @ hyp.T.astype(np.int64)
        rows, cols = linear_sum_assignment(-overlap)
        for i, j in zip(rows, cols, strict=True):
            correct += ref[i] & hyp[j]
    parts = {
        "missed": float(np.maximum(0, n_ref - n_hyp).sum()) * _STEP_S,
        "false_alarm": float(np.maximum(0, n_hyp - n_ref).sum()) * _STEP_S,
        "confusion": float((np.minimum(n_ref, n_hyp) - correct).sum()) * _STEP_S,
        "total": float(n_ref.sum()) * _STEP_S,
    }
    errors = parts["missed"] + parts["false_alarm"] + parts["confusion"]
    parts["der"] = errors / parts["total"] if parts["total"] > 0 else 0.0
    return parts


def _frame(t: float, n: int) -> int:
    return min(n, max(0, round(t / _STEP_S)))


def _activity(turns: Sequence[SpeakerTurn], n: int) -> np.ndarray:
    """``[speakers, n]`` bool: who speaks in each 1 ms frame."""
    speakers = sorted({turn.speaker for turn in turns})
    active = np.zeros((len(speakers), n), bool)
    index = {name: i for i, name in enumerate(speakers)}
    for turn in turns:
        active[index[turn.speaker], _frame(turn.start_s, n) : _frame(turn.end_s, n)] = True
    return active
