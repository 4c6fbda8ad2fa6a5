"""Voice activity detection with silero-vad's bundled weights (no download, CPU)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np
import soxr

from dpm_worker.audio.decode import SAMPLE_RATE
from dpm_worker.errors import ConfigError

# The JIT model is stateful (it carries context between 32 ms windows), so calls are serialized.
_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _load_vad() -> tuple[Any, Callable[..., list[dict[str, int]]]]:
    """The JIT model and silero's timestamp function, imported and loaded once."""
    import torch

    # Importing silero_vad calls torch.set_num_threads(1) for the whole process; undo that.
    threads = torch.get_num_threads()
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad

        return load_silero_vad(), get_speech_timestamps
    finally:
        torch.set_num_threads(threads)


def detect_speech(
    samples: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    *,
    min_speech_s: float = 0.25,
    min_silence_s: float = 0.3,
    threshold: float = 0.5,
) -> list[tuple[float, float]]:
    """Find speech regions in a mono signal.

    Args:
        samples: float mono samples ``[n]`` in [-1, 1]; resampled to 16 kHz when needed.
        sample_rate: their rate.
        min_speech_s: shorter speech bursts are dropped.
        min_silence_s: shorter pauses do not split a region.
        threshold: speech probability above which a 32 ms window counts as speech.

    Returns:
        ``(start_s, end_s)`` pairs in seconds, sorted, non-overlapping; empty when there is
        no speech.

    Note:
        While it runs, torch's (process-wide) intra-op thread count is 1; it is restored after.
    """
    if samples.ndim != 1:
        raise ConfigError(f"detect_speech needs mono samples [n], got shape {samples.shape}")
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold}")
    if min_speech_s < 0 or min_silence_s < 0:
        raise ConfigError(f"durations must be >= 0, got {min_speech_s=} {min_silence_s=}")
    audio = np.asarray(samples, dtype=np.float32)
    if sample_rate != SAMPLE_RATE:
        audio = soxr.resample(audio, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    if audio.size == 0:
        return []

    import torch

    model, get_speech_timestamps = _load_vad()
    # The model runs one 32 ms window at a time; more than one intra-op thread only adds
    # synchronization cost (measured 3-8x slower with 2 threads on a loaded 2-core machine).
    with _LOCK, _single_thread(torch):
        spans = get_speech_timestamps(
            torch.from_numpy(audio),
            model,
            threshold=threshold,
            sampling_rate=SAMPLE_RATE,
            min_speech_duration_ms=int(min_speech_s * 1000),
            min_silence_duration_ms=int(min_silence_s * 1000),
        )
    return [(span["start"] / SAMPLE_RATE, span["end"] / SAMPLE_RATE) for span in spans]


@contextmanager
def _single_thread(torch: Any) -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
