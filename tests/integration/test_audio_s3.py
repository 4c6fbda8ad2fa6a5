"""Audio through the local S3 endpoint: same samples as from disk, and segments are range reads."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import soundfile as sf

from dpm_worker import storage
from dpm_worker.audio import (
    conversation_segments,
    probe_audio,
    read_recording,
    read_segment,
    write_audio,
)
from dpm_worker.corpus import UtteranceRow
from dpm_worker.errors import AudioError

pytestmark = pytest.mark.integration

_FETCH = re.compile(r"Fetch: (\S+), (\d+)-(\d+)")


def _stereo(sr: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(7)
    t = np.arange(round(sr * seconds)) / sr
    left = 0.4 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.3 * t))
    right = 0.1 * rng.standard_normal(t.size).clip(-4, 4)
    return np.stack([left, right], axis=1).astype(np.float32)


def _upload(local_path, uri: str) -> None:
    fs, path = storage.get_filesystem(uri)
    with fs.open(path, "wb") as handle:
        handle.write(local_path.read_bytes())


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_s3_reads_equal_disk_reads(tmp_path, s3_bucket, ext):
    local = tmp_path / f"conv.{ext}"
    sf.write(local, _stereo(22050, 4.0), 22050)
    uri = f"s3://{s3_bucket}/audio/conv.{ext}"
    _upload(local, uri)

    assert probe_audio(uri) == probe_audio(str(local))
    np.testing.assert_array_equal(read_recording(uri).samples, read_recording(str(local)).samples)
    for start, end, channel in [(0.25, 1.5, 0), (2.0, 3.9, 1), (1.0, None, None)]:
        np.testing.assert_array_equal(
            read_segment(uri, start, end, channel), read_segment(str(local), start, end, channel)
        )
    rows = [
        UtteranceRow("c", 0, "a", uri, start_s=0.5, end_s=1.0, channel=0),
        UtteranceRow("c", 1, "b", uri, start_s=1.2, end_s=2.0, channel=1),
    ]
    local_rows = [
        UtteranceRow("c", r.utterance_index, r.speaker, str(local), r.start_s, r.end_s, r.channel)
        for r in rows
    ]
    for remote, disk in zip(
        conversation_segments(rows), conversation_segments(local_rows), strict=True
    ):
        np.testing.assert_array_equal(remote.samples, disk.samples)


def test_explicit_endpoint_and_write_audio(tmp_path, s3_bucket, local_s3, monkeypatch):
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "DPM_S3_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    uri = f"s3://{s3_bucket}/out/written.flac"
    samples = _stereo(16000, 1.0).T
    write_audio(uri, samples, 16000, endpoint_url=local_s3.endpoint_url)
    back = read_recording(uri, endpoint_url=local_s3.endpoint_url).samples
    assert np.abs(back - samples).max() < 1e-4
    with pytest.raises(AudioError, match="not found") as info:
        read_segment(f"s3://{s3_bucket}/out/missing.wav", endpoint_url=local_s3.endpoint_url)
    assert f"s3://{s3_bucket}/out/missing.wav" in str(info.value)


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_segment_is_a_range_read(tmp_path, s3_bucket, caplog, ext):
    # 2 minutes of 44.1 kHz stereo: ~21 MB as WAV, ~11 MB as FLAC.
    local = tmp_path / f"long.{ext}"
    sf.write(local, _stereo(44100, 120.0), 44100)
    uri = f"s3://{s3_bucket}/long.{ext}"
    _upload(local, uri)
    size = local.stat().st_size

    caplog.set_level(logging.DEBUG, logger="s3fs")
    segment = read_segment(uri, 61.0, 63.5, 1)
    fetched = sum(
        int(m[3]) - int(m[2])
        for m in (_FETCH.search(r.getMessage()) for r in caplog.records)
        if m and m[1].endswith(f"long.{ext}")
    )
    np.testing.assert_array_equal(segment, read_segment(str(local), 61.0, 63.5, 1))
    print(f"{ext}: fetched {fetched} of {size} bytes for a 2.5 s segment")
    assert 0 < fetched < 0.1 * size
