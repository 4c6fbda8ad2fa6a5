"""Emotion cues drawn per conversation, and prosody applied after synthesis.

An emotion is rendered by up to six cues, each a shift away from the speaker's baseline in the
usual direction (Scherer 2003; Juslin and Laukka 2003): ``pitch`` (median pitch level),
``range`` (pitch range), ``rate`` (speaking rate), ``loudness``, ``pauses`` (longer pauses
between words) and ``quality`` (voice effort as spectral tilt: tense and bright for anger, soft
and dark for sadness). Unlike the fixed cues of :mod:`dpm_worker.corpus.synth_voices`, each
conversation draws a *cue mix* (which cues are present; :data:`CUE_MIXES`) and, for every emotion
and cue, the size of the shift from a range, so no single cue and no single magnitude identifies
an emotion across conversations.

Pitch, tempo and loudness are also applied after synthesis with sox (``pitch``, ``tempo``), so
engines without prosody controls render every cue but the pitch range; which path a cue takes
is drawn per conversation.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from dpm_worker.errors import AudioError, ConfigError

CUES: tuple[str, ...] = ("pitch", "range", "rate", "loudness", "pauses", "quality")
# Named cue mixes, so that corpora can be split by mix; "random" keeps each cue with
# RandomizeConfig.cue_keep_prob (at least two cues), drawn per conversation.
CUE_MIXES: dict[str, tuple[str, ...]] = {
    "all": CUES,
    "no-pitch": ("rate", "loudness", "pauses", "quality"),
    "no-loudness": ("pitch", "range", "rate", "pauses", "quality"),
    "no-tempo": ("pitch", "range", "loudness", "quality"),
    "no-quality": ("pitch", "range", "rate", "loudness", "pauses"),
    "pitch-loudness": ("pitch", "range", "loudness"),
    "tempo-quality": ("rate", "pauses", "quality"),
    "random": (),
}

# Ranges of each emotion's shift at intensity 1 (drawn uniformly per conversation). Units:
# semitones, range factor, rate factor, dB, extra milliseconds per pause, tilt coefficient.
_SHIFT_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "pitch": {"happy": (1.5, 5.0), "angry": (0.5, 3.5), "sad": (-4.0, -1.0)},
    "range": {"happy": (1.3, 2.0), "angry": (1.0, 1.5), "sad": (0.45, 0.85)},
    "rate": {"happy": (1.0, 1.2), "angry": (1.05, 1.35), "sad": (0.7, 0.92)},
    "loudness": {"happy": (0.5, 4.0), "angry": (3.0, 9.0), "sad": (-8.0, -2.0)},
    "pauses": {"happy": (0.0, 20.0), "angry": (0.0, 20.0), "sad": (40.0, 160.0)},
    "quality": {"happy": (0.0, 0.3), "angry": (0.3, 0.8), "sad": (-0.7, -0.3)},
}
_NEUTRAL = {"pitch": 0.0, "range": 1.0, "rate": 1.0, "loudness": 0.0, "pauses": 0.0, "quality": 0.0}
_MULTIPLICATIVE = ("range", "rate")


@dataclass(frozen=True)
class CueProfile:
    """The cues of one conversation.

    Args:
        mix: the cue mix's name (a key of :data:`CUE_MIXES`).
        cues: the cues present (a subset of :data:`CUES`).
        shifts: per emotion, per cue, the shift at intensity 1 (absent cues: no shift).
        post_pitch: pitch level is applied after synthesis even where the engine sets it.
        post_rate: rate is applied after synthesis even where the engine sets it.
    """

    mix: str
    cues: tuple[str, ...]
    shifts: dict[str, dict[str, float]]
    post_pitch: bool
    post_rate: bool

    def shift(self, emotion: str, cue: str, intensity: float) -> float:
        """The shift of ``cue`` for ``emotion`` at ``intensity`` (0: the baseline)."""
        value = self.shifts.get(emotion, {}).get(cue, _NEUTRAL[cue])
        if cue in _MULTIPLICATIVE:
            return float(value**intensity)
        return float(value * intensity)


def draw_cue_profile(
    rng: np.random.Generator, mixes: tuple[str, ...], keep_prob: float, labels: tuple[str, ...]
) -> CueProfile:
    """Draw a conversation's cue mix, shift sizes and prosody paths.

    Args:
        rng: the conversation's generator.
        mixes: the allowed mixes (one is drawn uniformly).
        keep_prob: for the ``random`` mix, the probability that each cue is present.
        labels: the emotions to draw shifts for (neutral never shifts).
    """
    unknown = [m for m in mixes if m not in CUE_MIXES]
    if not mixes or unknown:
        raise ConfigError(f"cue mixes must be from {sorted(CUE_MIXES)}, got {mixes!r}")
    mix = mixes[int(rng.integers(len(mixes)))]
    cues = CUE_MIXES[mix]
    if mix == "random":
        keep = rng.random(len(CUES)) < keep_prob
        while keep.sum() < 2:
            keep[int(rng.integers(len(CUES)))] = True
        cues = tuple(c for c, k in zip(CUES, keep, strict=True) if k)
    shifts: dict[str, dict[str, float]] = {}
    for emotion in labels:
        shifts[emotion] = {}
        for cue in CUES:
            lo, hi = _SHIFT_RANGES[cue].get(emotion, (_NEUTRAL[cue], _NEUTRAL[cue]))
            value = float(rng.uniform(lo, hi))
            shifts[emotion][cue] = value if cue in cues else _NEUTRAL[cue]
    post = rng.random(2) < 0.5
    return CueProfile(mix, cues, shifts, bool(post[0]), bool(post[1]))


def sox_pitch_tempo(audio: np.ndarray, sample_rate: int, cents: float, tempo: float) -> np.ndarray:
    """Shift pitch by ``cents`` and scale tempo by ``tempo`` (duration / tempo) with sox.

    sox's ``pitch`` and ``tempo`` (WSOLA) keep formants roughly in place and are deterministic.
    """
    effects: list[str] = []
    if abs(cents) >= 1.0:
        effects += ["pitch", f"{cents:.1f}"]
    if abs(tempo - 1.0) >= 1e-3:
        effects += ["tempo", "-s", f"{tempo:.4f}"]
    if not effects:
        return audio
    raw = ["-t", "f32", "-r", str(sample_rate), "-c", "1"]
    cmd = ["sox", "-D", "-V1", *raw, "-", *raw, "-", *effects]
    try:
        out = subprocess.run(
            cmd, input=audio.astype("<f4").tobytes(), capture_output=True, check=True, timeout=120
        ).stdout
    except FileNotFoundError as exc:
        raise ConfigError("sox is not installed (apt-get install -y sox)") from exc
    except subprocess.CalledProcessError as exc:
        raise AudioError(
            f"sox failed: {exc.stderr.decode(errors='replace')}", " ".join(effects)
        ) from exc
    return np.frombuffer(out, dtype="<f4").astype(np.float32)


def insert_pauses(audio: np.ndarray, sample_rate: int, extra_ms: float) -> np.ndarray:
    """Lengthen each pause inside the utterance (a quiet run of >= 30 ms between two louder
    stretches) by ``extra_ms`` of silence; the engine-independent way to render ``pauses``."""
    hop = sample_rate // 100
    n = audio.size // hop
    if extra_ms < 5.0 or n < 10:
        return audio
    energy = 10.0 * np.log10(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-10)
    quiet = energy < energy.max() - 30.0
    cuts = []
    run_start = None
    for i, q in enumerate(quiet):
        if q and run_start is None:
            run_start = i
        elif not q and run_start is not None:
            if run_start > 0 and i - run_start >= 3:
                cuts.append((run_start + i) // 2 * hop)
            run_start = None
    if not cuts:
        return audio
    gap = np.zeros(int(extra_ms * sample_rate / 1000.0), dtype=np.float32)
    pieces, last = [], 0
    for cut in cuts:
        pieces += [audio[last:cut], gap]
        last = cut
    pieces.append(audio[last:])
    return np.concatenate(pieces)


def tilt(audio: np.ndarray, coefficient: float) -> np.ndarray:
    """Voice effort as spectral tilt: > 0 pre-emphasis (tense), < 0 one-pole low-pass (soft)."""
    if coefficient > 0.0:
        return lfilter([1.0, -coefficient], [1.0], audio).astype(np.float32)
    if coefficient < 0.0:
        return lfilter([1.0 + coefficient], [1.0, coefficient], audio).astype(np.float32)
    return audio


def speech_level_dbfs(audio: np.ndarray, sample_rate: int) -> float:
    """RMS level of the 20 ms frames that carry speech (pauses do not dilute it)."""
    frame = sample_rate // 50
    n = audio.size // frame
    if n == 0:
        return -120.0
    energy = np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1)
    active = energy[energy > energy.max() * 1e-3]
    return float(10.0 * np.log10(max(float(active.mean()), 1e-12)))
