"""Speakers, emotion prosody and espeak-ng rendering for the synthetic corpus (DESIGN section 6).

A speaker is an espeak-ng voice (language + variant, i.e. timbre) with its own baseline prosody:
median pitch, pitch range, speaking rate, loudness and word gap. An emotion is a *shift* of
that baseline. Pitch, rate and loudness baselines vary across speakers about as much as the
emotions shift them, so one utterance's absolute pitch/rate/loudness is ambiguous until the
speaker's own voice is known; pitch range, word gap, voice effort (spectral tilt) and
intonation (exclamation contour) vary little across speakers, so a clearly rendered (expressive)
utterance stays recognisable on its own. Male and female variants add a further pitch spread.
Measured (``dpm bench synth --separability``): expressive utterances 0.91 recognisable from one
utterance's acoustic features, 0.99 once the speaker's baseline is known.

espeak-ng is run as a subprocess with every parameter passed explicitly (its output is then
byte-for-byte reproducible); loudness is applied afterwards as an exact gain so that it does not
depend on the sentence.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import soxr
from scipy.signal import lfilter

from dpm_worker.errors import AudioError, ConfigError

ESPEAK_RATE = 22_050
LANGUAGES: tuple[str, ...] = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-us-nyc",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)

# Median F0 (Hz) of each espeak-ng 1.51 variant at -p 0, 25, 50, 75, 99, measured on en-us with
# an autocorrelation pitch tracker. Used to choose -p so that a speaker's baseline pitch lands
# where we want it whatever the variant's own pitch (variants differ by up to an octave).
_P_POINTS = np.array([0.0, 25.0, 50.0, 75.0, 99.0])
VARIANT_F0: dict[str, tuple[float, ...]] = {
    "": (74.2, 84.2, 104.0, 132.0, 172.3),
    "m1": (69.1, 79.6, 95.5, 122.5, 159.8),
    "m2": (67.0, 79.3, 101.6, 134.5, 177.8),
    "m3": (77.1, 88.9, 108.1, 136.1, 176.4),
    "m4": (71.8, 80.2, 95.0, 119.8, 154.2),
    "m5": (71.6, 84.5, 104.3, 133.6, 172.3),
    "m6": (72.2, 82.6, 102.6, 132.8, 173.6),
    "m7": (81.1, 91.3, 109.7, 137.0, 172.3),
    "f1": (119.8, 145.1, 182.2, 237.1, 310.6),
    "f2": (132.8, 159.8, 198.6, 253.4, 329.1),
    "f3": (152.1, 179.3, 216.2, 272.2, 344.5),
    "f4": (116.1, 143.2, 182.2, 237.1, 310.6),
    "f5": (132.8, 164.6, 208.0, 268.9, 355.6),
}
MALE_VARIANTS: tuple[str, ...] = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS: tuple[str, ...] = ("f1", "f2", "f3", "f4", "f5")
# Baseline median pitch centres; a speaker's baseline is drawn around them.
MALE_F0_HZ, FEMALE_F0_HZ = 105.0, 190.0


@dataclass(frozen=True)
class EmotionShift:
    """How an emotion moves prosody away from the speaker's baseline (at intensity 1).

    Args:
        pitch_st: median pitch shift in semitones.
        range_factor: multiplier of the pitch range (espeak-ng's SSML ``range``).
        rate_factor: multiplier of the speaking rate.
        level_db: loudness change in dB.
        gap_10ms: extra pause between words, in espeak-ng's 10 ms units.
        tilt: voice effort as a spectral tilt: > 0 pre-emphasis coefficient (tense, bright
            voice), < 0 minus a one-pole low-pass coefficient (soft, dark voice).
        exclaim: speak the sentence with espeak-ng's exclamation intonation (a wider, more
            animated contour); the manifest's text keeps the plain full stop.
    """

    pitch_st: float
    range_factor: float
    rate_factor: float
    level_db: float
    gap_10ms: float
    tilt: float
    exclaim: bool = False


# angry = loud + fast + high-ish + tense; happy = high + wide range + fast; sad = slow + low +
# quiet + flat + soft + pauses; neutral = the speaker's baseline. Pitch, rate and loudness
# shifts are as large as the speakers' baseline spread (ambiguous alone); range, word gap and
# tilt vary little across speakers, so an expressive utterance is recognisable on its own.
EMOTION_SHIFTS: dict[str, EmotionShift] = {
    "neutral": EmotionShift(0.0, 1.0, 1.0, 0.0, 0.0, 0.0),
    "happy": EmotionShift(4.0, 1.9, 1.15, 2.0, 0.0, 0.0, exclaim=True),
    "angry": EmotionShift(2.5, 1.15, 1.25, 7.0, 0.0, 0.6, exclaim=True),
    "sad": EmotionShift(-3.0, 0.4, 0.75, -6.0, 4.0, -0.6),
}

# Half-widths of the speakers' baseline spread at baseline_spread=1: pitch/rate/loudness match
# the emotions' shifts (about +-3 st, x0.8-1.25, +-5 dB); range and gap vary less.
_PITCH_SPREAD_ST = 3.0
_RATE_SPREAD = math.log(1.22)
_LEVEL_SPREAD_DB = 5.0
_RANGE_SPREAD = math.log(1.2)
_BASE_RATE_WPM = 170.0
_BASE_LEVEL_DBFS = -26.0


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: a voice and its neutral (baseline) prosody."""

    name: str
    channel: int
    language: str
    variant: str
    f0_hz: float
    range_pct: float
    rate_wpm: float
    level_dbfs: float
    gap_10ms: float

    @property
    def voice(self) -> str:
        return f"{self.language}+{self.variant}" if self.variant else self.language


@dataclass(frozen=True)
class Prosody:
    """The concrete espeak-ng parameters of one utterance (plus its gain)."""

    pitch: int
    range_pct: int
    rate_wpm: int
    gap_10ms: int
    level_dbfs: float
    f0_hz: float
    tilt: float = 0.0
    exclaim: bool = False


def sample_speaker(
    rng: np.random.Generator,
    name: str,
    channel: int,
    spread: float,
    female_prob: float,
    avoid: str = "",
) -> Speaker:
    """Draw a speaker's voice and baseline prosody.

    Args:
        rng: the conversation's generator.
        name: the speaker id.
        channel: the speaker's channel in the conversation recording.
        spread: scale of the baseline spread across speakers (1 = as large as emotion shifts).
        female_prob: probability of a female variant.
        avoid: a voice that must not be reused (the partner's), so speakers sound distinct.
    """
    while True:
        language = LANGUAGES[int(rng.integers(len(LANGUAGES)))]
        female = bool(rng.random() < female_prob)
        variants = FEMALE_VARIANTS if female else MALE_VARIANTS
        variant = variants[int(rng.integers(len(variants)))]
        voice = f"{language}+{variant}" if variant else language
        if voice != avoid:
            break
    centre = FEMALE_F0_HZ if female else MALE_F0_HZ
    u = rng.uniform(-1.0, 1.0, size=5) * spread
    return Speaker(
        name=name,
        channel=channel,
        language=language,
        variant=variant,
        f0_hz=centre * 2.0 ** (u[0] * _PITCH_SPREAD_ST / 12.0),
        range_pct=100.0 * math.exp(u[1] * _RANGE_SPREAD),
        rate_wpm=_BASE_RATE_WPM * math.exp(u[2] * _RATE_SPREAD),
        level_dbfs=_BASE_LEVEL_DBFS + u[3] * _LEVEL_SPREAD_DB,
        gap_10ms=max(0.0, 1.0 + u[4]),
    )


def pitch_parameter(variant: str, f0_hz: float) -> int:
    """espeak-ng's ``-p`` (0..99) that gives ``f0_hz`` for ``variant`` (clamped to its range)."""
    table = np.log(np.asarray(VARIANT_F0[variant]))
    return int(round(float(np.interp(math.log(f0_hz), table, _P_POINTS))))


def render_prosody(
    speaker: Speaker,
    emotion: str,
    intensity: float,
    rng: np.random.Generator,
    jitter: float,
) -> Prosody:
    """The prosody of one utterance: baseline, plus the emotion's shift times ``intensity``
    (0 for a non-expressive utterance), plus per-utterance jitter (natural variation).
    """
    shift = EMOTION_SHIFTS.get(emotion)
    if shift is None:
        raise ConfigError(f"no prosody for emotion {emotion!r}; known: {sorted(EMOTION_SHIFTS)}")
    j = rng.normal(0.0, 1.0, size=4) * jitter
    f0 = speaker.f0_hz * 2.0 ** ((shift.pitch_st * intensity + 0.6 * j[0]) / 12.0)
    range_pct = speaker.range_pct * shift.range_factor**intensity * math.exp(0.08 * j[1])
    rate = speaker.rate_wpm * shift.rate_factor**intensity * math.exp(0.04 * j[2])
    level = speaker.level_dbfs + shift.level_db * intensity + 1.0 * j[3]
    gap = speaker.gap_10ms + shift.gap_10ms * intensity
    return Prosody(
        pitch=min(99, max(0, pitch_parameter(speaker.variant, f0))),
        range_pct=int(round(min(200.0, max(5.0, range_pct)))),
        rate_wpm=int(round(min(400.0, max(90.0, rate)))),
        gap_10ms=int(round(max(0.0, gap))),
        level_dbfs=float(min(-12.0, level)),
        f0_hz=float(f0),
        tilt=float(np.clip(shift.tilt * intensity, -0.9, 0.9)),
        exclaim=shift.exclaim and intensity > 0.0,
    )


@lru_cache(maxsize=1)
def espeak_version() -> str:
    """The installed espeak-ng's version line (audio bytes are reproducible per version)."""
    try:
        out = subprocess.run(
            ["espeak-ng", "--version"], capture_output=True, check=True, timeout=30
        )
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        raise ConfigError("espeak-ng is not installed (apt-get install -y espeak-ng)") from exc
    return out.stdout.decode(errors="replace").split("Data at")[0].strip()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def synthesize(text: str, voice: str, prosody: Prosody, sample_rate: int) -> np.ndarray:
    """Speak ``text`` with espeak-ng and return float32 mono audio at ``sample_rate``.

    Leading/trailing silence is trimmed (a 30 ms margin kept) and the active speech is scaled
    to ``prosody.level_dbfs`` RMS, so loudness is exact and independent of the sentence.
    """
    if prosody.exclaim:
        text = text.rstrip(".") + "!"
    ssml = f'<speak><prosody range="{prosody.range_pct}%">{_escape(text)}</prosody></speak>'
    cmd = [
        "espeak-ng", "--stdout", "-m", "-z", "-b", "1",
        "-v", voice,
        "-p", str(prosody.pitch),
        "-s", str(prosody.rate_wpm),
        "-a", "100",
        "-g", str(prosody.gap_10ms),
        ssml,
    ]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
    except FileNotFoundError as exc:
        raise ConfigError("espeak-ng is not installed (apt-get install -y espeak-ng)") from exc
    except subprocess.CalledProcessError as exc:
        raise AudioError(f"espeak-ng failed: {exc.stderr.decode(errors='replace')}", voice) from exc
    # espeak-ng streams a WAV whose size fields are placeholders: read the PCM after "data".
    start = out.find(b"data")
    if start < 0:
        raise AudioError("espeak-ng produced no WAV data", voice)
    pcm = out[start + 8 :]
    raw = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    audio = soxr.resample(raw, ESPEAK_RATE, sample_rate, quality="HQ").astype(np.float32)
    return _normalize(_tilt(_trim(audio, sample_rate), prosody.tilt), prosody.level_dbfs, voice)


def _tilt(audio: np.ndarray, tilt: float) -> np.ndarray:
    if tilt > 0.0:  # pre-emphasis: y[n] = x[n] - a x[n-1]
        return lfilter([1.0, -tilt], [1.0], audio).astype(np.float32)
    if tilt < 0.0:  # one-pole low-pass: y[n] = (1 - b) x[n] + b y[n-1]
        return lfilter([1.0 + tilt], [1.0, tilt], audio).astype(np.float32)
    return audio


def _trim(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > 2e-3)
    if loud.size == 0:
        return audio
    margin = int(0.03 * sample_rate)
    return audio[max(0, loud[0] - margin) : loud[-1] + margin]


def _normalize(audio: np.ndarray, level_dbfs: float, voice: str) -> np.ndarray:
    # RMS over 20 ms frames that carry speech, so pauses do not dilute the level.
    frame = 320
    n = audio.size // frame
    if n == 0:
        raise AudioError("espeak-ng produced an empty utterance", voice)
    energy = np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1)
    active = energy[energy > energy.max() * 1e-3]
    rms = math.sqrt(float(active.mean()))
    gain = 10.0 ** (level_dbfs / 20.0) / max(rms, 1e-9)
    return np.clip(audio * gain, -0.999, 0.999).astype(np.float32)
