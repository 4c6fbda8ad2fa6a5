"""Frame features for the built-in speech tokenizer: spectral shape, loudness and pitch.

Every feature is computed on blocks of ``sample_rate / rate_hz`` samples (640 at 16 kHz and
25 Hz), so one block becomes one speech token. The synthetic emotions (and real ones) change
pitch, loudness and timing far more than spectral shape, so the three are kept apart:

- ``spectral``: log-mel energies pooled over the block *minus their mean over bins*, i.e. the
  shape of the spectrum without its level (level is the energy feature's job).
- ``log_energy``: log10 of the block's mean square, NOT normalised per utterance or speaker.
  Normalising would erase loudness, which is an emotion cue.
- ``log_f0``: log2 of an autocorrelation pitch estimate, NaN where the block is unvoiced.

Inference runs in torch so the tokenizer can share a device with the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from dpm_worker.audio import SAMPLE_RATE

# Pitch search range of the autocorrelation estimate; covers adult and child voices.
F0_MIN_HZ, F0_MAX_HZ = 60.0, 450.0
# A block counts as voiced when its normalised autocorrelation peak exceeds this and it is not
# near-silent; below these, the pitch estimate is noise.
VOICING_THRESHOLD = 0.45
SILENCE_LOG_ENERGY = -5.0


@dataclass(frozen=True)
class BlockFeatures:
    """Features of consecutive blocks of one waveform (one row per speech token)."""

    spectral: torch.Tensor  # [n, n_mels] float32
    log_energy: torch.Tensor  # [n] float32
    log_f0: torch.Tensor  # [n] float32, NaN where unvoiced

    def to(self, device: torch.device) -> BlockFeatures:
        """The same features on ``device``."""
        return BlockFeatures(
            spectral=self.spectral.to(device),
            log_energy=self.log_energy.to(device),
            log_f0=self.log_f0.to(device),
        )


def block_count(n_samples: int, block: int) -> int:
    """Number of speech tokens for ``n_samples``: one per started block, at least one."""
    return max(1, -(-n_samples // block))


@lru_cache(maxsize=8)
def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """HTK-style triangular mel filters, ``[n_fft // 2 + 1, n_mels]``."""

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(
        np.linspace(hz_to_mel(np.array(50.0)), hz_to_mel(np.array(sample_rate / 2.0)), n_mels + 2)
    )
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lower) / (centre - lower)
    falling = (upper - freqs[None, :]) / (upper - centre)
    weights = np.clip(np.minimum(rising, falling), 0.0, None)
    return torch.from_numpy(weights.T.astype(np.float32))


def compute_block_features(
    wave: torch.Tensor, *, sample_rate: int = SAMPLE_RATE, rate_hz: float = 25.0, n_mels: int = 40
) -> BlockFeatures:
    """Compute spectral shape, log-energy and pitch per block of ``sample_rate / rate_hz``.

    Args:
        wave: float32 mono waveform ``[n_samples]``.
        sample_rate: the waveform's sample rate.
        rate_hz: blocks (tokens) per second; must divide the sample rate into whole samples.
        n_mels: number of mel bands of the spectral feature.
    """
    block = int(round(sample_rate / rate_hz))
    n = block_count(int(wave.shape[0]), block)
    padded = torch.zeros(n * block, dtype=torch.float32, device=wave.device)
    padded[: wave.shape[0]] = wave.to(torch.float32)
    blocks = padded.view(n, block)

    log_energy = torch.log10(blocks.pow(2).mean(dim=1) + 1e-10)

    # Spectrum of each whole block (one Hann-windowed FFT per token): enough frequency detail
    # for a coarse spectral shape, and no sub-block pooling to align.
    n_fft = 1 << (block - 1).bit_length()
    window = torch.hann_window(block, device=wave.device)
    power = torch.fft.rfft(blocks * window, n=n_fft).abs().pow(2)
    mel = torch.log(power @ mel_filterbank(n_fft, n_mels, sample_rate).to(wave.device) + 1e-8)
    spectral = mel - mel.mean(dim=1, keepdim=True)

    log_f0 = _block_pitch(blocks, sample_rate, log_energy)
    return BlockFeatures(spectral=spectral, log_energy=log_energy, log_f0=log_f0)


def _block_pitch(blocks: torch.Tensor, sample_rate: int, log_energy: torch.Tensor) -> torch.Tensor:
    """Autocorrelation pitch per block; log2 Hz, NaN where unvoiced or silent."""
    n, size = blocks.shape
    centred = blocks - blocks.mean(dim=1, keepdim=True)
    n_fft = 1 << (2 * size - 1).bit_length()  # no circular wrap-around
    spectrum = torch.fft.rfft(centred, n=n_fft)
    acf = torch.fft.irfft(spectrum.abs().pow(2), n=n_fft)[:, :size]
    # Unbiased normalisation: a short block's autocorrelation shrinks linearly with the lag,
    # which would otherwise favour short lags (octave-up errors).
    lags = torch.arange(size, device=blocks.device, dtype=torch.float32)
    acf = acf / (size - lags).clamp(min=1.0) * size
    acf = acf / acf[:, :1].clamp(min=1e-12)
    lo = int(sample_rate / F0_MAX_HZ)
    hi = min(int(sample_rate / F0_MIN_HZ), size // 2)
    search = acf[:, lo:hi]
    peak = search.max(dim=1).values
    # Every multiple of the period peaks as high as the period itself, so the global maximum
    # is often a sub-harmonic: take the first lag within 10% of the maximum, then climb to
    # the top of that peak (within a quarter period).
    width = search.shape[1]
    index = torch.arange(width, device=blocks.device)
    first = torch.where(search >= 0.9 * peak[:, None], index, width).min(dim=1).values
    near = (index[None, :] >= first[:, None]) & (
        index[None, :] <= first[:, None] + (first[:, None] + lo) // 4 + 1
    )
    arg = torch.where(near, search, torch.full_like(search, -2.0)).argmax(dim=1)
    f0 = sample_rate / (arg + lo).to(torch.float32)
    voiced = (peak > VOICING_THRESHOLD) & (log_energy > SILENCE_LOG_ENERGY)
    return torch.where(voiced, torch.log2(f0), torch.full_like(f0, float("nan")))
