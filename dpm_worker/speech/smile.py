"""openSMILE eGeMAPS features (the ``opensmile`` package, audEERING's field-standard extractor).

Two uses:

- :func:`smile_block_features`: the built-in tokenizer's frame features when its config says
  ``features: egemaps``. The 25 eGeMAPSv02 low-level descriptors come every 10 ms; four frames
  make one 40 ms block (one speech token at 25 Hz). Pitch is openSMILE's F0 (semitones from
  27.5 Hz, turned into log2 Hz; a block is voiced when at least half its frames are), the
  "spectral" vector is the 23 descriptors of spectral balance and voice quality (alpha ratio,
  Hammarberg index, spectral slopes and flux, MFCC 1-4, jitter, shimmer, HNR, H1-H2, H1-A3,
  formants F1-F3 with bandwidths and levels), and the level stays the block's log10 mean square
  (the speaker-relative levels and the silence rule count on it).
- :func:`egemaps_functionals`: the 88 eGeMAPSv02 functionals of an utterance, the features of
  the textbook baseline (``dpm bench real_baseline``).

openSMILE is deterministic, so codes stay bitwise reproducible. The extractor object is built
once per process and feature level.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from dpm_worker.errors import ConfigError
from dpm_worker.speech.features import BlockFeatures

LLD_HOP_S = 0.01  # eGeMAPSv02 descriptors every 10 ms
F0_COLUMN = "F0semitoneFrom27.5Hz_sma3nz"
LOUDNESS_COLUMN = "Loudness_sma3"
# every descriptor but pitch and loudness: spectral balance and voice quality
SPECTRAL_DIM = 23
INSTALL_HINT = "pip install opensmile (it ships its SMILExtract library in the wheel)"


@lru_cache(maxsize=2)
def _smile(level: str) -> Any:
    try:
        import opensmile
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ConfigError(f"the egemaps front end needs opensmile: {INSTALL_HINT}") from exc
    feature_level = {
        "lld": opensmile.FeatureLevel.LowLevelDescriptors,
        "functionals": opensmile.FeatureLevel.Functionals,
    }[level]
    return opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=feature_level)


def egemaps_lld(wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, list[str]]:
    """The 25 eGeMAPSv02 low-level descriptors of ``wave``: ``[frames, 25]`` float32 (one row
    per 10 ms) and the column names."""
    frame = _smile("lld").process_signal(np.asarray(wave, dtype=np.float32), sample_rate)
    return frame.to_numpy(dtype=np.float32), list(frame.columns)


def egemaps_functionals(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """The 88 eGeMAPSv02 functionals of one utterance, float64."""
    wave = np.asarray(wave, dtype=np.float32)
    # openSMILE needs a few frames; a clip shorter than 0.1 s is padded with silence
    wave = np.pad(wave, (0, max(0, sample_rate // 10 - wave.size)))
    frame = _smile("functionals").process_signal(wave, sample_rate)
    return frame.to_numpy(dtype=np.float64)[0]


def smile_block_features(wave: np.ndarray, sample_rate: int, rate_hz: float) -> BlockFeatures:
    """Block features of one waveform from its eGeMAPS descriptors (module docstring).

    ``wave`` is already padded to whole blocks; its block count is ``len(wave) / block``.
    """
    block = int(round(sample_rate / rate_hz))
    samples = np.asarray(wave, dtype=np.float32)
    n_blocks = max(1, samples.size // block)
    # half a block of silence on each side so that the first and last blocks get whole frames
    pad = block // 2
    lld, columns = egemaps_lld(np.pad(samples, (pad, pad)), sample_rate)
    f0_col, loud_col = columns.index(F0_COLUMN), columns.index(LOUDNESS_COLUMN)
    spectral_cols = [i for i in range(len(columns)) if i not in (f0_col, loud_col)]
    # frame j starts at j * hop in the padded wave: its block is that time, less the pad
    starts = np.arange(len(lld)) * LLD_HOP_S * sample_rate - pad
    index = np.floor(starts / block).astype(np.int64)
    keep = (index >= 0) & (index < n_blocks)
    index, lld = index[keep], lld[keep]
    counts = np.bincount(index, minlength=n_blocks).astype(np.float64)
    spectral = np.zeros((n_blocks, len(spectral_cols)), np.float64)
    for d, col in enumerate(spectral_cols):
        spectral[:, d] = np.bincount(index, weights=lld[:, col], minlength=n_blocks)
    spectral /= np.maximum(counts, 1.0)[:, None]
    semitone = lld[:, f0_col].astype(np.float64)
    voiced = semitone > 0
    voiced_n = np.bincount(index, weights=voiced.astype(np.float64), minlength=n_blocks)
    f0_sum = np.bincount(index, weights=np.where(voiced, semitone, 0.0), minlength=n_blocks)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_st = f0_sum / voiced_n
    is_voiced = (counts > 0) & (voiced_n * 2 >= counts)
    log_f0 = np.where(is_voiced, np.log2(27.5) + mean_st / 12.0, np.nan)
    blocks = samples[: n_blocks * block].reshape(n_blocks, block).astype(np.float64)
    log_energy = np.log10(np.mean(blocks**2, axis=1) + 1e-10)
    return BlockFeatures(
        spectral=torch.from_numpy(spectral.astype(np.float32)),
        log_energy=torch.from_numpy(log_energy.astype(np.float32)),
        log_f0=torch.from_numpy(log_f0.astype(np.float32)),
    )


def smile_batch_features(
    waves: list[torch.Tensor], sample_rate: int, rate_hz: float
) -> BlockFeatures:
    """:func:`smile_block_features` of each padded wave, stacked as the tokenizer stacks
    blocks (openSMILE reads each wave on its own: its descriptors span frames across blocks)."""
    parts = [smile_block_features(w.numpy(), sample_rate, rate_hz) for w in waves]
    return BlockFeatures(
        spectral=torch.cat([p.spectral for p in parts]),
        log_energy=torch.cat([p.log_energy for p in parts]),
        log_f0=torch.cat([p.log_f0 for p in parts]),
    )
