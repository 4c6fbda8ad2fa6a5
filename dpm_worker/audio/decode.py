"""Recording I/O: decode (libsndfile via soundfile), resample (soxr), split channels, cut segments.

Every reader takes a local path or an ``s3://`` URI (through ``storage.get_filesystem``) and
returns float32 samples at ``SAMPLE_RATE``. A segment read seeks to its first frame and decodes
only the frames it needs, so a remote read fetches a few blocks instead of the whole object.
Every failure that is the recording's fault raises ``AudioError`` or ``SegmentError`` naming
the URI and what is wrong, so the caller can turn it into an error row.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import fsspec
import numpy as np
import soundfile as sf
import soxr

from dpm_worker.errors import AudioError, ConfigError, SegmentError, StorageError
from dpm_worker.storage import get_filesystem, is_remote

# The one sample rate of the pipeline: decoding, VAD, speech codes and the synthetic corpus.
SAMPLE_RATE = 16000
# A segment may end this far past the recording's end (rounding in annotations); it is clamped.
END_TOLERANCE_S = 0.05
# Peak amplitude below which a recording counts as silent (about -80 dBFS).
SILENCE_PEAK = 1e-4
# Remote block sizes: small for range reads (a segment costs a few requests of this size),
# large for whole-file reads (few requests). s3fs's own default is 50 MiB.
_RANGE_BLOCK = 256 * 1024
_WHOLE_BLOCK = 8 * 1024 * 1024
# Extra native frames decoded on each side of a segment so the resampler's filter sees the
# same neighbourhood as when the whole recording is resampled.
_RESAMPLE_PAD_S = 0.05
# WAV codec tags libsndfile decodes; any other tag is reported as an unsupported codec.
_WAV_CODECS = {0x0001, 0x0002, 0x0003, 0x0006, 0x0007, 0x0011, 0x0031, 0x0055, 0xFFFE}
# Containers libsndfile cannot read, recognised by their first bytes.
_FOREIGN_MAGIC = {b"ftyp": "MP4/M4A/MOV", b"\x1aE\xdf\xa3": "Matroska/WebM", b"#!AM": "AMR"}
_EXTENSION_FORMATS = {
    ".wav": "WAV",
    ".flac": "FLAC",
    ".ogg": "OGG",
    ".opus": "OGG",
    ".aiff": "AIFF",
}


@dataclass(frozen=True)
class AudioInfo:
    """What a recording's header says, at its native sample rate."""

    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    format: str


@dataclass(frozen=True)
class Recording:
    """A decoded recording: ``samples`` is float32 ``[channels, n]`` at ``sample_rate``."""

    samples: np.ndarray
    uri: str
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return self.samples.shape[1] / self.sample_rate


def probe_audio(uri: str, *, endpoint_url: str | None = None) -> AudioInfo:
    """Read a recording's header only.

    Raises:
        AudioError: the file is missing, empty, corrupt or in an unsupported format.
    """
    with _open_sound(uri, endpoint_url, _RANGE_BLOCK) as snd:
        return AudioInfo(
            snd.samplerate, snd.channels, snd.frames, snd.frames / snd.samplerate, snd.format
        )


def clip_duration(uri: str, *, endpoint_url: str | None = None) -> float:
    """A recording's duration in seconds, from its header only (``probe_audio``).

    Raises:
        AudioError: the file is missing, empty, corrupt or in an unsupported format.
    """
    return probe_audio(uri, endpoint_url=endpoint_url).duration_s


def read_recording(uri: str, *, endpoint_url: str | None = None) -> Recording:
    """Decode a whole recording, all channels, resampled to 16 kHz.

    Raises:
        AudioError: missing, empty, corrupt, unsupported, non-finite or all-silent recording.
    """
    with _open_sound(uri, endpoint_url, _WHOLE_BLOCK) as snd:
        frames = snd.read(dtype="float32", always_2d=True)
        native_sr = snd.samplerate
    _check_finite(frames, uri)
    samples = np.ascontiguousarray(_resample(frames, native_sr).T)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak < SILENCE_PEAK:
        raise AudioError(f"recording is all silence (peak {peak:.2e} < {SILENCE_PEAK:.0e})", uri)
    return Recording(samples=samples, uri=uri)


def read_segment(
    uri: str,
    start_s: float | None = None,
    end_s: float | None = None,
    channel: int | None = None,
    *,
    endpoint_url: str | None = None,
) -> np.ndarray:
    """Decode one segment as float32 mono 16 kHz, reading only the frames it needs.

    Args:
        uri: local path or ``s3://`` URI.
        start_s: segment start in seconds (None: the recording's start).
        end_s: segment end in seconds (None: the recording's end). Up to ``END_TOLERANCE_S``
            past the end is clamped.
        channel: channel to keep; None averages all channels.
        endpoint_url: explicit S3 endpoint.

    Raises:
        AudioError: unreadable recording or non-finite samples.
        SegmentError: negative, reversed or out-of-range times, or a bad channel index.
    """
    with _open_sound(uri, endpoint_url, _RANGE_BLOCK) as snd:
        sr, duration = snd.samplerate, snd.frames / snd.samplerate
        start, end = check_times(start_s, end_s, duration, uri)
        _check_channel(channel, snd.channels, uri)
        first, last = _target_span(start, end, uri)
        # Decode from a frame that maps exactly onto a 16 kHz sample (a multiple of
        # sr/gcd), padded, so cutting after resampling lands on the same samples as
        # cut_segment on the whole recording.
        step = sr // math.gcd(sr, SAMPLE_RATE)
        lo = max(0, round((start - _RESAMPLE_PAD_S) * sr)) // step * step
        hi = min(snd.frames, round((end + _RESAMPLE_PAD_S) * sr))
        snd.seek(lo)
        frames = snd.read(hi - lo, dtype="float32", always_2d=True)
    _check_finite(frames, uri)
    mono = _select_channel(frames.T, channel)
    resampled = _resample(mono[:, None], sr)[:, 0]
    offset = lo * SAMPLE_RATE // sr
    return _fit_length(resampled[first - offset : last - offset], last - first)


def cut_segment(
    recording: Recording, start_s: float | None, end_s: float | None, channel: int | None
) -> np.ndarray:
    """Cut a segment out of a decoded recording as float32 mono (same rules as read_segment)."""
    start, end = check_times(start_s, end_s, recording.duration_s, recording.uri)
    _check_channel(channel, recording.samples.shape[0], recording.uri)
    first, last = _target_span(start, end, recording.uri)
    mono = _select_channel(recording.samples[:, first:last], channel)
    return _fit_length(mono, last - first)


def check_times(
    start_s: float | None, end_s: float | None, duration_s: float, uri: str
) -> tuple[float, float]:
    """Validate segment times against a recording's duration and fill in missing ends.

    Returns:
        ``(start, end)`` in seconds, ``end`` clamped to the duration when it exceeds it by
        at most ``END_TOLERANCE_S``.

    Raises:
        SegmentError: a time is negative or non-finite, start >= end, or the segment lies
            outside the recording.
    """
    start = 0.0 if start_s is None else float(start_s)
    end = duration_s if end_s is None else float(end_s)
    if not (math.isfinite(start) and math.isfinite(end)):
        raise SegmentError(f"segment times must be finite, got start={start_s} end={end_s}", uri)
    if start < 0 or end < 0:
        raise SegmentError(f"negative segment time: start={start_s} end={end_s}", uri)
    if end > duration_s + END_TOLERANCE_S or start >= duration_s:
        raise SegmentError(
            f"segment {start:.3f}-{end:.3f} s lies outside the recording ({duration_s:.3f} s)", uri
        )
    if start >= end:
        raise SegmentError(f"reversed or empty segment: start={start_s} >= end={end_s}", uri)
    return start, min(end, duration_s)


def encode_audio(
    samples: np.ndarray, sample_rate: int, format: str = "FLAC", *, subtype: str | None = None
) -> bytes:
    """Encode ``[channels, n]`` or ``[n]`` float samples into an audio file's bytes.

    WAV and FLAC output are deterministic (same samples, same bytes). Integer subtypes clip to
    [-1, 1] first, because libsndfile wraps out-of-range floats instead of clipping them.
    """
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim == 2:
        data = data.T
    elif data.ndim != 1:
        raise ConfigError(f"samples must be [n] or [channels, n], got shape {samples.shape}")
    subtype = subtype or sf.default_subtype(format)
    if subtype not in ("FLOAT", "DOUBLE"):
        data = np.clip(data, -1.0, 1.0)
    # soundfile cannot write through s3fs handles (it needs to seek back to fix the header).
    buffer = io.BytesIO()
    sf.write(buffer, data, sample_rate, format=format, subtype=subtype)
    return buffer.getvalue()


def write_audio(
    uri: str,
    samples: np.ndarray,
    sample_rate: int,
    format: str | None = None,
    *,
    endpoint_url: str | None = None,
) -> None:
    """Encode samples and write them to a local path or ``s3://`` URI.

    Args:
        format: a libsndfile major format ("WAV", "FLAC", "OGG"); None infers it from the
            extension.
    """
    if format is None:
        ext = os.path.splitext(uri)[1].lower()
        if ext not in _EXTENSION_FORMATS:
            raise ConfigError(f"cannot infer an audio format from extension {ext!r} of {uri}")
        format = _EXTENSION_FORMATS[ext]
    payload = encode_audio(samples, sample_rate, format)
    fs, path = get_filesystem(uri, endpoint_url)
    if not is_remote(uri):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
    fs.pipe_file(path, payload)


@contextmanager
def _open_sound(uri: str, endpoint_url: str | None, block_size: int) -> Iterator[sf.SoundFile]:
    """Open a recording for decoding, translating every failure into an AudioError."""
    fs, path = get_filesystem(uri, endpoint_url)
    try:
        size = fs.size(path)
    except FileNotFoundError:
        raise AudioError("audio file not found", uri) from None
    except PermissionError as exc:
        raise StorageError(f"access denied to {uri}: {exc}") from None
    if not size:
        raise AudioError("audio file is empty (0 bytes)", uri)
    # Local files go straight to libsndfile; remote ones through a small-block fsspec handle.
    handle = (
        fs.open(path, "rb", block_size=block_size, cache_type="readahead")
        if is_remote(uri)
        else None
    )
    try:
        try:
            snd = sf.SoundFile(handle if handle is not None else path)
        except sf.LibsndfileError as exc:
            raise AudioError(_describe_failure(fs, path, exc), uri) from None
        with snd:
            if snd.frames <= 0:
                raise AudioError(
                    f"recording has no audio frames ({snd.format} header, 0 frames)", uri
                )
            try:
                yield snd
            except sf.LibsndfileError as exc:  # a sound header, then data that stops or breaks
                reason = getattr(exc, "error_string", str(exc))
                raise AudioError(
                    f"truncated or corrupt {snd.format} audio data (libsndfile: {reason})", uri
                ) from None
    finally:
        if handle is not None:
            handle.close()


def _describe_failure(fs: fsspec.AbstractFileSystem, path: str, exc: sf.LibsndfileError) -> str:
    """Say why libsndfile refused a file: unsupported container or codec, or a broken header."""
    reason = getattr(exc, "error_string", str(exc))
    try:
        with fs.open(path, "rb", block_size=4096) as handle:
            head = handle.read(64)
    except OSError as os_exc:  # e.g. a directory
        return f"cannot read the file: {os_exc}"
    for magic, name in _FOREIGN_MAGIC.items():
        if magic in head[:12]:
            return (
                f"unsupported format {name}: libsndfile cannot decode it; extract the audio "
                f"first (e.g. ffmpeg -i IN -vn -c:a flac OUT.flac)"
            )
    if head[:4] == b"RIFF" and head[8:16] == b"WAVEfmt " and len(head) >= 22:
        (codec,) = struct.unpack("<H", head[20:22])
        if codec not in _WAV_CODECS:
            return f"unsupported WAV codec 0x{codec:04X} (libsndfile: {reason})"
    for magic, name in ((b"RIFF", "WAV"), (b"fLaC", "FLAC"), (b"OggS", "OGG"), (b"FORM", "AIFF")):
        if head.startswith(magic):
            return f"corrupt or truncated {name} header (libsndfile: {reason})"
    return f"unrecognised or unsupported audio format (libsndfile: {reason})"


def _check_finite(frames: np.ndarray, uri: str) -> None:
    if not np.isfinite(frames).all():
        bad = int(np.count_nonzero(~np.isfinite(frames)))
        raise AudioError(f"recording contains {bad} NaN/inf samples", uri)


def _check_channel(channel: int | None, channels: int, uri: str) -> None:
    if channel is not None and not 0 <= channel < channels:
        raise SegmentError(
            f"channel {channel} out of range for a {channels}-channel recording", uri
        )


def _select_channel(samples: np.ndarray, channel: int | None) -> np.ndarray:
    """``[channels, n]`` -> ``[n]``: one channel, or the mean of all of them."""
    if channel is None:
        return samples.mean(axis=0, dtype=np.float32)
    return samples[channel]


def _resample(frames: np.ndarray, sample_rate: int) -> np.ndarray:
    """``[n, channels]`` at ``sample_rate`` -> ``[m, channels]`` float32 at SAMPLE_RATE."""
    if sample_rate == SAMPLE_RATE or frames.shape[0] == 0:
        return frames.astype(np.float32, copy=False)
    return soxr.resample(frames, sample_rate, SAMPLE_RATE, quality="HQ").astype(
        np.float32, copy=False
    )


def _target_span(start: float, end: float, uri: str) -> tuple[int, int]:
    """Sample indices of a segment at SAMPLE_RATE; a segment shorter than one sample is an error."""
    first, last = round(start * SAMPLE_RATE), round(end * SAMPLE_RATE)
    if last <= first:
        raise SegmentError(
            f"segment {start}-{end} s is shorter than one sample at {SAMPLE_RATE} Hz", uri
        )
    return first, last


def _fit_length(samples: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad to exactly ``n`` samples (the resampler may be off by one at the end)."""
    if samples.shape[0] >= n:
        return np.ascontiguousarray(samples[:n], dtype=np.float32)
    return np.pad(samples, (0, n - samples.shape[0])).astype(np.float32)
