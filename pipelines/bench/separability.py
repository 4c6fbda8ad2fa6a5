"""How recognisable a corpus's emotions are, from acoustics alone: the evidence that expressive
utterances render their emotion, that speakers' baselines vary about as much as the emotions
shift prosody, and that context recovers the mood of non-expressive utterances.

Per utterance, a few prosodic features are measured from the audio (median pitch, pitch spread,
loudness, a syllable-rate proxy, pause fraction, spectral centroid and tilt); a gradient-boosted
classifier is cross-validated by conversation *on the corpus itself*. Trained and tested on the
same distribution, and (in the ``with_speaker_baseline`` figure) told each speaker's neutral
level from the labels, it is a generous reference for what the corpus's prosody allows, not a
baseline a model has to beat: a held-out target far above it asks for cues the audio does not
carry (issue 11).

``dpm bench synth --separability N`` measures it on a fresh corpus of the espeak-ng generator;
``dpm bench separability --corpus DIR --group-by engine,cue_mix`` on an existing local corpus,
per split as well.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import soundfile as sf
import torch

from dpm_worker.audio import SAMPLE_RATE
from dpm_worker.errors import BadInputError, ConfigError
from dpm_worker.speech import compute_block_features
from dpm_worker.storage import join_uri
from pipelines.bench.command import print_report

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


def rich_features(x: np.ndarray) -> list[float]:
    """The FEATURES and more of one mono 16 kHz utterance (``--features rich``): the mean and
    spread over the speech blocks of the tokenizer's 40 mel-shape bands, percentiles (10, 25,
    50, 75, 90) of block loudness and of voiced pitch, the mean loudness change between blocks,
    the duration and the speech fraction of the blocks."""
    feats = compute_block_features(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    energy = feats.log_energy
    loud = energy > energy.max() - 3.5  # log10 units: within 35 dB of the loudest block
    shape = feats.spectral[loud]
    level = energy[loud].numpy()
    f0 = feats.log_f0[~torch.isnan(feats.log_f0)].numpy()
    percentiles = [10, 25, 50, 75, 90]
    return [
        *prosody_features(x),
        *shape.mean(0).tolist(),
        *shape.std(0, correction=0).tolist(),
        *np.percentile(level, percentiles).tolist(),
        *(np.percentile(f0, percentiles).tolist() if f0.size else [0.0] * len(percentiles)),
        float(np.abs(np.diff(level)).mean()) if level.size > 1 else 0.0,
        x.size / SAMPLE_RATE,
        float(loud.float().mean()),
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


def _accuracy(gold: np.ndarray, pred: np.ndarray) -> float:
    return round(float(np.mean(gold == pred)), 3)


def measure_separability(
    out_uri: str,
    table: pa.Table,
    folds: int = 5,
    group_by: tuple[str, ...] = (),
    features: str = "prosody",
) -> dict[str, Any]:
    """Cross-validated accuracies on a (local) corpus; see the module docstring.

    With ``group_by``, the expressive accuracies are also given per value of each manifest
    column (from the same pooled cross-validated predictions). ``features``: ``prosody`` (the
    seven FEATURES) or ``rich`` (:func:`rich_features`).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import GroupKFold, cross_val_predict

    missing = [c for c in group_by if c not in table.column_names]
    if missing:
        raise BadInputError(f"--group-by {missing} not columns of the manifest", out_uri)
    rows = table.to_pylist()
    x = corpus_features(out_uri, table, rich_features if features == "rich" else prosody_features)
    y = np.array([r["emotion"] for r in rows])
    groups = np.array([r["conversation_id"] for r in rows])
    speakers = np.array([f"{r['conversation_id']}\0{r['speaker']}" for r in rows])
    expressive = np.array([r["expressive"] for r in rows])
    # a speaker's baseline: the mean features of their non-expressive (neutrally spoken) turns,
    # chosen with the labels; and, without them, the mean of all their turns in the conversation
    baseline = np.full_like(x, np.nan)
    overall = np.empty_like(x)
    for speaker in set(speakers):
        mine = speakers == speaker
        overall[mine] = x[mine].mean(axis=0)
        if (mine & ~expressive).any():
            baseline[mine] = x[mine & ~expressive].mean(axis=0)
    known = ~np.isnan(baseline).any(axis=1)

    def cv_predict(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        model = HistGradientBoostingClassifier(max_iter=150, random_state=0)
        cv = GroupKFold(min(folds, len(set(groups[mask]))))
        return cross_val_predict(model, features[mask], y[mask], groups=groups[mask], cv=cv)

    single_pred = cv_predict(x, expressive)
    per_class = {
        label: _accuracy(single_pred[y[expressive] == label], label)
        for label in sorted(set(y[expressive]))
    }
    normalised_pred = cv_predict(np.hstack([x, x - baseline]), expressive & known)
    conversation_pred = cv_predict(np.hstack([x, x - overall]), expressive)
    subtle = _accuracy(cv_predict(x, ~expressive), y[~expressive])
    # context: a non-expressive turn takes the label last *predicted* for the same speaker's
    # expressive turn (no true labels in the history); neutral before any.
    predicted = dict(zip(np.flatnonzero(expressive), single_pred, strict=True))
    latest: dict[str, str] = {}
    hits = []
    for i, speaker in enumerate(speakers):
        if expressive[i]:
            latest[speaker] = predicted[i]
        else:
            hits.append(latest.get(speaker, "neutral") == y[i])
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
    report: dict[str, Any] = {
        "utterances": len(rows),
        "features": features,
        "expressive_single_utterance_accuracy": _accuracy(y[expressive], single_pred),
        "expressive_single_utterance_recall": per_class,
        "expressive_with_speaker_baseline_accuracy": _accuracy(
            y[expressive & known], normalised_pred
        ),
        "expressive_with_conversation_mean_accuracy": _accuracy(y[expressive], conversation_pred),
        "non_expressive_single_utterance_accuracy": subtle,
        "non_expressive_from_predicted_context_accuracy": round(float(np.mean(hits)), 3),
        "baseline_spread_vs_emotion_shift": spread,
    }
    for column in group_by:
        values = np.array([str(r[column]) for r in rows])
        by: dict[str, Any] = {}
        for value in sorted(set(values)):
            sel, sel_known = values[expressive] == value, values[expressive & known] == value
            by[value] = {
                "expressive_n": int(sel.sum()),
                "single_utterance": _accuracy(y[expressive][sel], single_pred[sel]),
                "with_speaker_baseline": _accuracy(
                    y[expressive & known][sel_known], normalised_pred[sel_known]
                ),
                "with_conversation_mean": _accuracy(y[expressive][sel], conversation_pred[sel]),
            }
        report[f"by_{column}"] = by
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="a local corpus folder (manifest + audio)")
    parser.add_argument(
        "--group-by", default=None, help="comma-separated columns: also report per value of each"
    )
    parser.add_argument(
        "--folds", type=int, default=5, help="cross-validation folds, by conversation (5)"
    )
    parser.add_argument(
        "--features",
        choices=("prosody", "rich"),
        default="prosody",
        help="prosody: the seven features; rich: those and 93 more (mel-shape means and spreads, "
        "loudness and pitch percentiles, duration) (%(default)s)",
    )
    parser.add_argument("--json", default=None, help="also write the JSON here")


def run(args: argparse.Namespace) -> int:
    from dpm_worker.corpus import read_manifest

    if not Path(args.corpus).is_dir():
        raise ConfigError(f"expected a local corpus folder, got {args.corpus!r}")
    if args.folds < 2:
        raise ConfigError(f"--folds must be >= 2, got {args.folds}")
    table = read_manifest(args.corpus)
    if "expressive" not in table.column_names:
        raise BadInputError(
            "the manifest has no expressive column (a generated corpus has)", args.corpus
        )
    columns = tuple(c.strip() for c in (args.group_by or "").split(",") if c.strip())
    report = {
        "corpus": args.corpus,
        **measure_separability(args.corpus, table, args.folds, columns, args.features),
    }
    print_report(report, args.json)
    return 0
