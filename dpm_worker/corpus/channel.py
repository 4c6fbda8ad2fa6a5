"""Recording channels for the domain-randomized corpus: room, noise, band and codec.

Each speaker's side of a conversation goes through its own :class:`Line`, drawn per
conversation: room reverberation (an exponentially decaying noise impulse response of a drawn
RT60), additive noise (white, pink or brown) at a drawn signal-to-noise ratio, and either the
wide band (16 kHz) or a telephone line (300-3400 Hz at 8 kHz, as 16-bit PCM or through a codec
sox writes: GSM 06.10, mu-law, a-law, IMA ADPCM or AMR-NB), resampled back to the corpus rate.
Draws come from the conversation's generator and sox is deterministic, so the bytes are too.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve

from dpm_worker.errors import AudioError, ConfigError

CODECS: tuple[str, ...] = ("pcm", "gsm", "ul", "al", "vox", "amr-nb")
NOISES: tuple[str, ...] = ("white", "pink", "brown")


@dataclass(frozen=True)
class ChannelConfig:
    """How often and how strongly channels vary.

    Args:
        telephone_prob: probability that a speaker's side is a telephone line (8 kHz).
        codecs: codecs a telephone line draws from (``pcm``: no codec).
        noise_prob: probability of additive noise.
        snr_db: range of the signal-to-noise ratio (dB) when there is noise.
        reverb_prob: probability of room reverberation.
        rt60_s: range of the reverberation time (s).
    """

    telephone_prob: float = 0.3
    codecs: tuple[str, ...] = CODECS
    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (5.0, 30.0)
    reverb_prob: float = 0.3
    rt60_s: tuple[float, float] = (0.15, 0.7)

    def __post_init__(self) -> None:
        for name in ("telephone_prob", "noise_prob", "reverb_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
        bad = [c for c in self.codecs if c not in CODECS]
        if not self.codecs or bad:
            raise ConfigError(f"codecs must be from {CODECS}, got {self.codecs!r}")
        lo, hi = self.snr_db
        if not -5.0 <= lo <= hi <= 60.0:
            raise ConfigError(f"snr_db must be a range within [-5, 60], got {self.snr_db!r}")
        lo, hi = self.rt60_s
        if not 0.05 <= lo <= hi <= 2.0:
            raise ConfigError(f"rt60_s must be a range within [0.05, 2], got {self.rt60_s!r}")


@dataclass(frozen=True)
class Line:
    """One speaker's recording channel.

    Args:
        telephone: band-limited to 300-3400 Hz at 8 kHz.
        codec: the telephone codec (``pcm``: none), ignored on the wide band.
        noise: noise colour, or None for no added noise.
        snr_db: signal-to-noise ratio of the added noise.
        rt60_s: reverberation time, or None for a dry recording.
    """

    telephone: bool
    codec: str
    noise: str | None
    snr_db: float
    rt60_s: float | None

    @property
    def name(self) -> str:
        """A compact description, e.g. ``tel-gsm+pink12+rt0.4`` or ``wide``."""
        parts = [f"tel-{self.codec}" if self.telephone else "wide"]
        if self.noise is not None:
            parts.append(f"{self.noise}{self.snr_db:.0f}")
        if self.rt60_s is not None:
            parts.append(f"rt{self.rt60_s:.1f}")
        return "+".join(parts)


def draw_line(rng: np.random.Generator, config: ChannelConfig) -> Line:
    """Draw one speaker's channel (always the same number of draws, whatever is chosen)."""
    u = rng.random(6)
    telephone = bool(u[0] < config.telephone_prob)
    codec = config.codecs[int(u[1] * len(config.codecs))]
    noisy = bool(u[2] < config.noise_prob)
    noise = NOISES[int(u[3] * len(NOISES))] if noisy else None
    snr = float(rng.uniform(*config.snr_db))
    rt60 = float(rng.uniform(*config.rt60_s)) if u[4] < config.reverb_prob else None
    return Line(telephone, codec, noise, snr, rt60)


def _room(rng: np.random.Generator, rt60_s: float, sample_rate: int) -> np.ndarray:
    # Direct path plus an exponentially decaying diffuse tail (-60 dB at rt60) that starts after
    # a few ms, as a small room's impulse response looks to a first approximation.
    n = int(rt60_s * sample_rate)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * 10.0 ** (-3.0 * t / rt60_s)
    tail[: int(0.004 * sample_rate)] = 0.0
    ir = 0.4 * tail / max(float(np.sqrt(np.sum(tail**2))), 1e-9)
    ir[0] = 1.0
    return ir


def _noise(rng: np.random.Generator, colour: str, n: int, sample_rate: int) -> np.ndarray:
    white = rng.standard_normal(n)
    if colour == "white":
        return white
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    power = 1.0 if colour == "pink" else 2.0  # 1/f or 1/f^2 power
    # nothing below 20 Hz: a microphone does not pass it, and 1/f would make it dominate
    gain = np.where(freqs >= 20.0, np.maximum(freqs, 20.0) ** (-power / 2.0), 0.0)
    shaped = np.fft.irfft(spectrum * gain, n)
    return shaped / max(float(np.sqrt(np.mean(shaped**2))), 1e-12)


def _sox(audio: np.ndarray, before: list[str], after: list[str], effects: list[str]) -> bytes:
    cmd = ["sox", "-D", "-V1", *before, "-", *after, "-", *effects]
    try:
        return subprocess.run(
            cmd, input=audio.tobytes(), capture_output=True, check=True, timeout=600
        ).stdout
    except FileNotFoundError as exc:
        raise ConfigError("sox is not installed (apt-get install -y sox)") from exc
    except subprocess.CalledProcessError as exc:
        raise AudioError(
            f"sox failed: {exc.stderr.decode(errors='replace')}", " ".join(cmd)
        ) from exc


def _telephone(audio: np.ndarray, codec: str, sample_rate: int) -> np.ndarray:
    raw = ["-t", "f32", "-c", "1"]
    # band-limit and resample to 8 kHz, through the codec and back to the corpus rate
    coded = _sox(
        np.clip(audio, -0.999, 0.999).astype("<f4"),
        [*raw, "-r", str(sample_rate)],
        ["-t", "s16" if codec == "pcm" else codec, "-r", "8000", "-c", "1"],
        ["sinc", "300-3400", "rate", "-v", "8000"],
    )
    decoded = subprocess.run(
        ["sox", "-D", "-V1", "-t", "s16" if codec == "pcm" else codec, "-r", "8000", "-c", "1",
         "-", *raw, "-r", str(sample_rate), "-", "rate", "-v", str(sample_rate)],
        input=coded, capture_output=True, check=True, timeout=600,
    ).stdout  # fmt: skip
    out = np.frombuffer(decoded, dtype="<f4").astype(np.float32)
    # codecs pad or drop a frame: keep the timeline of the manifest
    if out.size < audio.size:
        out = np.concatenate([out, np.zeros(audio.size - out.size, np.float32)])
    return out[: audio.size]


def apply_line(
    audio: np.ndarray, line: Line, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """One speaker's side (mono float32, the whole conversation) through ``line``.

    Noise is scaled against the level of the speech in this side (frames within 30 dB of the
    loudest), so the SNR holds whatever the speaker's loudness.
    """
    out = audio.astype(np.float64)
    if line.rt60_s is not None:
        out = fftconvolve(out, _room(rng, line.rt60_s, sample_rate))[: audio.size]
    if line.noise is not None:
        frame = sample_rate // 50
        n = out.size // frame
        energy = np.mean(out[: n * frame].reshape(n, frame) ** 2, axis=1)
        active = energy[energy > energy.max() * 1e-3] if n else np.ones(1)
        speech_power = float(active.mean())
        noise = _noise(rng, line.noise, out.size, sample_rate)
        out = out + noise * np.sqrt(speech_power / 10.0 ** (line.snr_db / 10.0))
    out32 = out.astype(np.float32)
    if line.telephone:
        out32 = _telephone(out32, line.codec, sample_rate)
    return out32
