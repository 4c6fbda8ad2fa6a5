"""How recognisable the synthetic corpus's emotions are, from acoustics alone (``dpm bench synth
--separability``): the evidence that expressive utterances render their emotion, that speakers'
baselines vary about as much as the emotions shift prosody, and that context recovers the mood
of non-expressive utterances.

Per utterance, a few prosodic features are measured from the audio (median pitch, pitch spread,
loudness, a syllable-rate proxy, pause fraction, spectral centroid and tilt); a gradient-boosted
classifier is cross-validated by conversation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import soundfile as sf

from dpm_worker.audio import SAMPLE_RATE
from dpm_worker.storage import join_uri

FEATURES = (
    "pitch_st",
    "pitch_spread_st",
    "level_db",
    "peak_rate",
    "pause_fraction",
    "centroid_hz",
    "tilt_db",
)
_FRAME, _HOP = 640, 160  # 40 ms frames, 10 ms hop


def _analyse(x: np.ndarray) -> dict[str, np.ndarray]:
    """Frame energies (dB), which frames carry speech, the pitch (semitones) of the voiced
    ones, and the spectra of the speech frames, of one mono 16 kHz utterance."""
    n = 1 + (x.size - _FRAME) // _HOP
    frames = np.lib.stride_tricks.sliding_window_view(x, _FRAME)[::_HOP][:n]
    energy = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-10)
    active = energy > energy.max() - 35
    speech = frames[active] - frames[active].mean(axis=1, keepdims=True)
    # autocorrelation pitch: strongest lag between 60 and 450 Hz, kept when clearly periodic
    autocorr = np.fft.irfft(np.abs(np.fft.rfft(speech, 2 * _FRAME)) ** 2)[:, :_FRAME]
    lo, hi = SAMPLE_RATE // 450, SAMPLE_RATE // 60
    lag = lo + np.argmax(autocorr[:, lo:hi], axis=1)
    voiced = autocorr[np.arange(lag.size), lag] > 0.45 * autocorr[:, 0]
    pitch = 12 * np.log2(SAMPLE_RATE / lag[voiced]) if voiced.any() else np.zeros(1)
    smooth = np.convolve(energy, np.ones(5) / 5, "same")
    peaks = (
        (smooth[1:-1] > smooth[:-2])
        & (smooth[1:-1] >= smooth[2:])
        & (smooth[1:-1] > energy.max() - 25)
    )
    return {
        "energy": energy,
        "active": active,
        "speech": speech,
        "voiced": voiced,
        "pitch": pitch,
        "peaks": peaks,
    }


def prosody_features(x: np.ndarray) -> list[float]:
    """The FEATURES of one mono 16 kHz utterance."""
    a = _analyse(x)
    energy, active, pitch, speech = a["energy"], a["active"], a["pitch"], a["speech"]
    power = np.abs(np.fft.rfft(speech * np.hanning(_FRAME), axis=1)) ** 2
    freqs = np.fft.rfftfreq(_FRAME, 1 / SAMPLE_RATE)
    return [
        float(np.median(pitch)),
        float(np.percentile(pitch, 90) - np.percentile(pitch, 10)),
        float(10 * np.log10(np.mean(10 ** (energy[active] / 10)))),
        float(a["peaks"].sum() / (x.size / SAMPLE_RATE)),
        float(1.0 - active.mean()),
        float(np.mean((power * freqs).sum(1) / (power.sum(1) + 1e-12))),
        float(10 * np.log10(power[:, freqs > 2000].sum() / (power[:, freqs < 1000].sum() + 1e-12))),
    ]


# The five universal statistics of issue 11's logistic baseline (no pitch range, no tilt).
STATISTICS = ("pitch_st", "level_db", "level_spread_db", "voiced_fraction", "peak_rate")


def utterance_statistics(x: np.ndarray) -> list[float]:
    """The STATISTICS of one mono 16 kHz utterance: median pitch, mean loudness and its spread
    over the speech frames, the voiced fraction of those frames, and a syllable-rate proxy."""
    a = _analyse(x)
    energy, active = a["energy"], a["active"]
    return [
        float(np.median(a["pitch"])),
        float(10 * np.log10(np.mean(10 ** (energy[active] / 10)))),
        float(np.std(energy[active])),
        float(a["voiced"].mean()) if a["voiced"].size else 0.0,
        float(a["peaks"].sum() / (x.size / SAMPLE_RATE)),
    ]


def corpus_features(out_uri: str, table: pa.Table, features=prosody_features) -> np.ndarray:
    """``features`` of every utterance of a (local) corpus, in manifest order."""
    audio: dict[str, np.ndarray] = {}
    rows = []
    for row in table.select(["audio_uri", "start_s", "end_s", "channel"]).to_pylist():
        if row["audio_uri"] not in audio:
            audio.clear()  # manifests are grouped by conversation: one file in memory
            audio[row["audio_uri"]] = sf.read(join_uri(out_uri, row["audio_uri"]), dtype="float32")[
                0
            ]
        begin, end = round(row["start_s"] * SAMPLE_RATE), round(row["end_s"] * SAMPLE_RATE)
        rows.append(features(audio[row["audio_uri"]][begin:end, row["channel"]]))
    return np.asarray(rows, dtype=np.float64)


def measure_separability(out_uri: str, table: pa.Table, folds: int = 5) -> dict[str, Any]:
    """Cross-validated accuracies on a generated (local) corpus; see the module docstring."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import GroupKFold, cross_val_predict

    rows = table.to_pylist()
    x = corpus_features(out_uri, table)
    y = np.array([r["emotion"] for r in rows])
    groups = np.array([r["conversation_id"] for r in rows])
    speakers = np.array([r["speaker"] for r in rows])
    expressive = np.array([r["expressive"] for r in rows])
    # a speaker's baseline: the mean features of their non-expressive (neutrally spoken) turns
    baseline = np.full_like(x, np.nan)
    for speaker in set(speakers):
        mine = speakers == speaker
        if (mine & ~expressive).any():
            baseline[mine] = x[mine & ~expressive].mean(axis=0)
    known = ~np.isnan(baseline).any(axis=1)

    def cv_accuracy(features: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray]:
        model = HistGradientBoostingClassifier(max_iter=150, random_state=0)
        cv = GroupKFold(min(folds, len(set(groups[mask]))))
        pred = cross_val_predict(model, features[mask], y[mask], groups=groups[mask], cv=cv)
        return float(np.mean(pred == y[mask])), pred

    single, single_pred = cv_accuracy(x, expressive)
    per_class = {
        label: round(float(np.mean(single_pred[y[expressive] == label] == label)), 3)
        for label in sorted(set(y[expressive]))
    }
    normalised, _ = cv_accuracy(np.hstack([x, x - baseline]), expressive & known)
    subtle, _ = cv_accuracy(x, ~expressive)
    # context: a non-expressive turn takes the label last *predicted* for the same speaker's
    # expressive turn (no true labels in the history); neutral before any.
    predicted = dict(zip(np.flatnonzero(expressive), single_pred, strict=True))
    latest: dict[str, str] = {}
    hits = []
    for i, row in enumerate(rows):
        if expressive[i]:
            latest[row["speaker"]] = predicted[i]
        else:
            hits.append(latest.get(row["speaker"], "neutral") == row["emotion"])
    spread = {}
    for j, name in enumerate(FEATURES):
        per_speaker = [baseline[speakers == s, j][0] for s in sorted(set(speakers[known]))]
        shifts = {}
        for label in sorted(set(y)):
            sel = expressive & known & (y == label)
            if sel.any():
                shifts[label] = round(float(np.mean(x[sel, j] - baseline[sel, j])), 2)
        spread[name] = {
            "speaker_baseline_sd": round(float(np.std(per_speaker)), 2),
            "emotion_shift": shifts,
        }
    return {
        "utterances": len(rows),
        "expressive_single_utterance_accuracy": round(single, 3),
        "expressive_single_utterance_recall": per_class,
        "expressive_with_speaker_baseline_accuracy": round(normalised, 3),
        "non_expressive_single_utterance_accuracy": round(subtle, 3),
        "non_expressive_from_predicted_context_accuracy": round(float(np.mean(hits)), 3),
        "baseline_spread_vs_emotion_shift": spread,
    }
