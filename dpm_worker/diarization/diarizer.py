"""Diarization of a mono recording's speech regions: who speaks when, speakers ``spk0..``.

The VAD's speech regions (``dpm_worker.audio.detect_speech``) are tiled into chunks of about
``hop_s``; each chunk is heard through a window of ``window_s`` centred on it (kept inside its
region), embedded by the pretrained speaker encoder (``encoder.py``), clustered into an unknown
number of speakers and re-segmented by a Viterbi pass (``clustering.py``). Adjacent chunks of
one speaker become one turn; where the speaker changes inside a region, the boundary moves to
the quietest 100 ms near the chunk edge (the breath between two people's words). Speakers are
named ``spk0``, ``spk1``, ... in order of first speech.

Cost: the encoder hears each second of speech ``window_s / hop_s`` times (1.5x by default;
hop 1.0 s read conversations of RAVDESS actors 01-08 as well as 0.75 s, DER 8.3 % against
8.4 %, 1.4x faster); measured in ``dpm bench diarization`` (docs/diarization.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dpm_worker.corpus.schema import SpeakerTurn
from dpm_worker.diarization.clustering import cluster_embeddings, viterbi_speakers
from dpm_worker.diarization.whitening import load_whitening, whiten
from dpm_worker.errors import ConfigError

SPEAKER_PREFIX = "spk"
# The encoder's frame grid (encoder.py, which imports torch only when a chunk is embedded).
SAMPLE_RATE = 16000
HOP = 160
_QUIET_WINDOW_S = 0.1
_QUIET_HOP_S = 0.01


@dataclass(frozen=True)
class DiarizationConfig:
    """How mono recordings without an RTTM are diarized (YAML ``segments.diarization``).

    Args:
        enabled: diarize mono recordings whose row names no speaker (False: one ``unknown``
            speaker, as before). Stereo recordings (a speaker per channel) and rows with an
            RTTM are never diarized.
        max_speakers: the most speakers found in one recording (1 or more).
        window_s: the audio each chunk's embedding hears (seconds).
        hop_s: the chunk length, i.e. the time resolution before boundary refinement.
        threshold: two clusters whose centroids' cosine similarity (after the within-speaker
            whitening) reaches this are one speaker. Tuned on conversations of RAVDESS actors
            01-08 with the whitening fitted on actors 09-18 (docs/diarization.md), as are the
            other defaults; never on the benchmark's speakers.
        more_threshold: the same for a third and further speaker: a split of one voice by its
            moods is as distinct as two voices, so more speakers must be clearly apart.
        min_share: a cluster with less than this share of the speech is no speaker of its own.
        sharpness: scale of the cosine score in the Viterbi pass.
        switch_penalty: cost of a speaker change between adjacent chunks (half across a pause).
        whiten: whiten the embeddings by the shipped within-speaker covariance
            (``whitening.py``) before clustering.
    """

    enabled: bool = False
    max_speakers: int = 4
    window_s: float = 1.5
    hop_s: float = 1.0
    threshold: float = 0.7
    more_threshold: float = 0.0
    min_share: float = 0.08
    sharpness: float = 20.0
    switch_penalty: float = 1.0
    whiten: bool = True

    def __post_init__(self) -> None:
        checks = {
            "max_speakers": isinstance(self.max_speakers, int) and 1 <= self.max_speakers <= 32,
            "window_s": _finite(self.window_s) and 0.5 <= self.window_s <= 10.0,
            "hop_s": _finite(self.hop_s) and 0.1 <= self.hop_s <= self.window_s,
            "threshold": _finite(self.threshold) and -1.0 < self.threshold < 1.0,
            "more_threshold": _finite(self.more_threshold) and -1.0 < self.more_threshold < 1.0,
            "min_share": _finite(self.min_share) and 0.0 <= self.min_share < 0.5,
            "sharpness": _finite(self.sharpness) and self.sharpness > 0,
            "switch_penalty": _finite(self.switch_penalty) and self.switch_penalty >= 0,
            "whiten": isinstance(self.whiten, bool),
            "enabled": isinstance(self.enabled, bool),
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"segments.diarization.{name} is invalid: {getattr(self, name)!r}"
                )


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def diarize(
    samples: np.ndarray,
    regions: Sequence[tuple[float, float]],
    config: DiarizationConfig,
    file_id: str = "",
) -> list[SpeakerTurn]:
    """Split a mono recording's speech regions into speakers' turns.

    Args:
        samples: 16 kHz mono float samples ``[n]`` of the whole recording.
        regions: its speech regions ``(start_s, end_s)``, sorted and disjoint (the VAD's).
        config: the diarization settings.
        file_id: the recording's name in the returned turns (RTTM's file id).

    Returns:
        Turns sorted by start, tiling the regions, speakers ``spk0..`` in order of first speech.
    """
    if samples.ndim != 1:
        raise ConfigError(f"diarize needs mono samples [n], got shape {samples.shape}")
    chunks = _chunks(regions, config.hop_s, samples.shape[0] / SAMPLE_RATE)
    if not chunks:
        return []
    embeddings = _embed_chunks(samples, regions, chunks, config.window_s)
    if config.whiten:
        embeddings = whiten(embeddings, *load_whitening())
    return _assign(samples, chunks, embeddings, config, file_id)


def chunk_embeddings(
    samples: np.ndarray, regions: Sequence[tuple[float, float]], config: DiarizationConfig
) -> np.ndarray:
    """The encoder's embeddings ``[n, 256]`` of the chunks ``diarize`` cuts from ``regions``
    (before the whitening); for fitting it (``pipelines.diarize_fit``)."""
    chunks = _chunks(regions, config.hop_s, samples.shape[0] / SAMPLE_RATE)
    if not chunks:
        return np.zeros((0, 256), np.float32)
    return _embed_chunks(samples, regions, chunks, config.window_s)


def _assign(
    samples: np.ndarray,
    chunks: list[tuple[int, float, float]],
    embeddings: np.ndarray,
    config: DiarizationConfig,
    file_id: str,
) -> list[SpeakerTurn]:
    spans = np.array([(a, b) for _, a, b in chunks])
    labels = cluster_embeddings(
        embeddings,
        spans[:, 1] - spans[:, 0],
        max_speakers=config.max_speakers,
        threshold=config.threshold,
        min_share=config.min_share,
        more_threshold=config.more_threshold,
    )
    starts_region = np.array(
        [i == 0 or chunks[i - 1][0] != r for i, (r, _, _) in enumerate(chunks)]
    )
    labels = viterbi_speakers(
        embeddings,
        labels,
        starts_region,
        sharpness=config.sharpness,
        switch_penalty=config.switch_penalty,
    )
    return _turns(samples, chunks, labels, config.hop_s, file_id)


def _chunks(
    regions: Sequence[tuple[float, float]], hop_s: float, duration: float
) -> list[tuple[int, float, float]]:
    """``(region index, start_s, end_s)`` of each chunk: a region cut into equal chunks of
    about ``hop_s``."""
    out: list[tuple[int, float, float]] = []
    for r, (start, end) in enumerate(regions):
        start, end = max(0.0, start), min(end, duration)
        if end - start < 2 * HOP / SAMPLE_RATE:
            continue
        n = max(1, round((end - start) / hop_s))
        edges = np.linspace(start, end, n + 1)
        out.extend((r, float(a), float(b)) for a, b in zip(edges[:-1], edges[1:], strict=True))
    return out


def _embed_chunks(
    samples: np.ndarray,
    regions: Sequence[tuple[float, float]],
    chunks: list[tuple[int, float, float]],
    window_s: float,
) -> np.ndarray:
    from dpm_worker.diarization.encoder import (
        embed_frames,
        load_speaker_encoder,
        loudness_gain,
        mel_frames,
    )

    pieces = []
    frames: dict[int, tuple[float, np.ndarray]] = {}
    for r, a, b in chunks:
        if r not in frames:  # one region's mel frames at a time, computed once
            frames = {r: (regions[r][0], mel_frames(_cut(samples, *regions[r])))}
        region_start, mel = frames[r]
        region_end = region_start + (mel.shape[0] - 1) * HOP / SAMPLE_RATE
        length = min(window_s, region_end - region_start)
        lo = min(max(region_start, (a + b - length) / 2), region_end - length)
        f0 = round((lo - region_start) * SAMPLE_RATE / HOP)
        f1 = max(f0 + 1, round((lo + length - region_start) * SAMPLE_RATE / HOP))
        pieces.append(mel[f0:f1] * loudness_gain(_cut(samples, lo, lo + length)))
    return embed_frames(load_speaker_encoder(), pieces)


def _cut(samples: np.ndarray, start: float, end: float) -> np.ndarray:
    return samples[max(0, round(start * SAMPLE_RATE)) : round(end * SAMPLE_RATE)]


def _turns(
    samples: np.ndarray,
    chunks: list[tuple[int, float, float]],
    labels: np.ndarray,
    hop_s: float,
    file_id: str,
) -> list[SpeakerTurn]:
    merged: list[list] = []  # [region, start, end, label]
    for (r, a, b), label in zip(chunks, labels.tolist(), strict=True):
        last = merged[-1] if merged else None
        if last is not None and last[0] == r and last[3] == label:
            last[2] = b
            continue
        if last is not None and last[0] == r:  # a change inside a region: find the breath
            cut = _quietest(samples, a - hop_s / 2, a + hop_s / 2, last[1], b)
            last[2] = a = cut
        merged.append([r, a, b, label])
    names: dict[int, str] = {}
    for _, _, _, label in merged:
        names.setdefault(label, f"{SPEAKER_PREFIX}{len(names)}")
    return [
        SpeakerTurn(file_id, names[label], float(a), float(b)) for _, a, b, label in merged if b > a
    ]


def _quietest(samples: np.ndarray, lo: float, hi: float, floor: float, ceiling: float) -> float:
    """The centre of the quietest 100 ms in ``[lo, hi]`` (kept inside ``(floor, ceiling)``)."""
    lo, hi = max(lo, floor + _QUIET_HOP_S), min(hi, ceiling - _QUIET_HOP_S)
    if hi <= lo:
        return (lo + hi) / 2
    half = _QUIET_WINDOW_S / 2
    grid = np.arange(lo, hi + 1e-9, _QUIET_HOP_S)
    seg = np.asarray(_cut(samples, lo - half, hi + half), dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(seg * seg)])
    offset = max(0, round((lo - half) * SAMPLE_RATE))
    centres = np.round(grid * SAMPLE_RATE).astype(np.int64) - offset
    w = round(half * SAMPLE_RATE)
    a = np.clip(centres - w, 0, seg.size)
    b = np.clip(centres + w, 0, seg.size)
    power = (cumulative[b] - cumulative[a]) / np.maximum(b - a, 1)
    return float(grid[int(np.argmin(power))])
