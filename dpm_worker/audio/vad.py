"""Voice activity detection with silero-vad's bundled weights (no download, CPU), and the rule
that cuts a speech region the model cannot read whole.

Defaults (threshold 0.35, pauses under 0.5 s kept inside a region, 0.2 s of padding) were chosen
on the four AMI meeting excerpts of pyannote-audio's test data against their reference RTTMs:
they cover 86-97% of the reference speech with 0-7% of the segments' length in reference
silence, where silero's own defaults (0.5, 0.1 s, 30 ms) covered 72-86% (tests/fixtures/
real_speech/README.md). Reference turns include a speaker's short pauses; a segment per turn
is what emotion labeling wants, not a segment per breath group.

Over-long regions (:func:`split_at_quietest`): a region longer than ``max_s`` is cut into the
fewest pieces of at most ``max_s``; each cut lands at the quietest 100 ms (lowest mean power)
among the cut points that still allow the fewest pieces. silero's ``max_speech_duration_s``
was not used: it cuts at the last pause of >= 98 ms before the limit, else hard at the limit
(mid-word), and a following piece may be a sliver; it also cannot cut an RTTM turn.
"""

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

# The quietest point is the lowest mean power over this window, on a 10 ms grid.
_QUIET_WINDOW_S = 0.1
_QUIET_HOP_S = 0.01
# Pieces shorter than this are avoided when the span allows (a sliver carries no emotion).
_MIN_PIECE_S = 1.0
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
    min_silence_s: float = 0.5,
    threshold: float = 0.35,
    speech_pad_s: float = 0.2,
) -> list[tuple[float, float]]:
    """Find speech regions in a mono signal.

    Args:
        samples: float mono samples ``[n]`` in [-1, 1]; resampled to 16 kHz when needed.
        sample_rate: their rate.
        min_speech_s: shorter speech bursts are dropped.
        min_silence_s: shorter pauses do not split a region.
        threshold: speech probability above which a 32 ms window counts as speech.
        speech_pad_s: padding added on both sides of a region (silero halves it between
            regions closer than twice the padding).

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
    if min(min_speech_s, min_silence_s, speech_pad_s) < 0:
        raise ConfigError(
            f"durations must be >= 0, got {min_speech_s=} {min_silence_s=} {speech_pad_s=}"
        )
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
            speech_pad_ms=int(speech_pad_s * 1000),
        )
    return [(span["start"] / SAMPLE_RATE, span["end"] / SAMPLE_RATE) for span in spans]


def split_at_quietest(
    samples: np.ndarray, sample_rate: int, start_s: float, end_s: float, max_s: float
) -> list[tuple[float, float]]:
    """Cut the region ``[start_s, end_s)`` of a mono signal into pieces of at most ``max_s``.

    The fewest pieces are made (``ceil(length / max_s)``); each cut, from the left, is the
    quietest point (lowest mean power over 100 ms, 10 ms grid) among those that leave a
    remainder still coverable by the fewest pieces, avoiding pieces under 1 s when possible.

    Args:
        samples: float mono samples ``[n]`` of the whole recording.
        sample_rate: their rate.
        start_s: the region's start in seconds.
        end_s: its end in seconds.
        max_s: the longest piece in seconds (> 0).

    Returns:
        ``(start_s, end_s)`` pieces in order; they tile the region exactly (one piece when the
        region already fits).
    """
    if samples.ndim != 1:
        raise ConfigError(f"split_at_quietest needs mono samples [n], got shape {samples.shape}")
    if not max_s > 0:
        raise ConfigError(f"max_s must be > 0, got {max_s}")
    if end_s - start_s <= max_s:
        return [(start_s, end_s)]
    hop = max(1, round(_QUIET_HOP_S * sample_rate))
    first = round(start_s * sample_rate)
    region = np.asarray(samples[first : round(end_s * sample_rate)], dtype=np.float64)
    power = _smoothed_power(region, hop, max(1, round(_QUIET_WINDOW_S * sample_rate)))
    n = region.size
    longest = int(max_s * sample_rate)  # whole samples: a piece never exceeds max_s
    min_piece = round(_MIN_PIECE_S * sample_rate)
    cuts, at = [], 0
    while n - at > longest:
        pieces = -(-(n - at) // longest)
        lo = n - (pieces - 1) * longest
        hi = at + longest
        if min(hi, n - min_piece) >= max(lo, at + min_piece):
            lo, hi = max(lo, at + min_piece), min(hi, n - min_piece)
        grid = np.arange(-(-lo // hop), hi // hop + 1)
        at = int(grid[np.argmin(power[grid])] * hop) if grid.size else hi
        cuts.append(at)
    bounds = [start_s, *((first + c) / sample_rate for c in cuts), end_s]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _smoothed_power(region: np.ndarray, hop: int, window: int) -> np.ndarray:
    """Mean power over ``window`` samples centred on every ``hop``-th sample (one per grid
    point, ``len(region) // hop + 1`` of them)."""
    cumulative = np.concatenate([[0.0], np.cumsum(region * region)])
    centres = np.arange(region.size // hop + 1) * hop
    lo = np.clip(centres - window // 2, 0, region.size)
    hi = np.clip(centres + window // 2, 0, region.size)
    return (cumulative[hi] - cumulative[lo]) / np.maximum(hi - lo, 1)


@contextmanager
def _single_thread(torch: Any) -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
