"""Audio decoding, resampling, segment cutting, encoding, and every bad-input case."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf
import soxr

from dpm_worker.audio import (
    SAMPLE_RATE,
    AudioInfo,
    cut_segment,
    encode_audio,
    probe_audio,
    read_recording,
    read_segment,
    write_audio,
)
from dpm_worker.errors import AudioError, BadInputError, ConfigError, SegmentError


def _stereo(sr: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Two different channels: a 440 Hz tone on the left, seeded noise on the right, [n, 2]."""
    n = round(sr * seconds)
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    right = 0.2 * rng.standard_normal(n).clip(-4, 4)
    return np.stack([left, right], axis=1).astype(np.float32)


@pytest.fixture
def stereo_wav(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, _stereo(22050, 3.0), 22050, subtype="FLOAT")
    return str(path)


@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg")])
def test_probe_reports_header(tmp_path, fmt, ext):
    path = tmp_path / f"a.{ext}"
    sf.write(path, _stereo(44100, 1.5), 44100, format=fmt)
    info = probe_audio(str(path))
    assert info == AudioInfo(44100, 2, round(44100 * 1.5), 1.5, fmt)


@pytest.mark.parametrize(
    "fmt,ext,tol", [("WAV", "wav", 1e-4), ("FLAC", "flac", 1e-4), ("OGG", "ogg", 0.05)]
)
def test_read_recording_resamples_with_soxr(tmp_path, fmt, ext, tol):
    native = _stereo(22050, 2.0)
    path = tmp_path / f"a.{ext}"
    sf.write(path, native, 22050, format=fmt)
    rec = read_recording(str(path))
    assert rec.sample_rate == SAMPLE_RATE and rec.samples.dtype == np.float32
    assert rec.samples.shape == (2, 2 * SAMPLE_RATE)
    assert rec.duration_s == pytest.approx(2.0)
    expected = soxr.resample(sf.read(path, dtype="float32")[0], 22050, SAMPLE_RATE, quality="HQ").T
    assert np.abs(rec.samples - expected).max() < tol
    # The tone keeps its pitch after resampling: its spectrum peaks at 440 Hz.
    spectrum = np.abs(np.fft.rfft(rec.samples[0]))
    assert np.fft.rfftfreq(rec.samples.shape[1], 1 / SAMPLE_RATE)[
        spectrum.argmax()
    ] == pytest.approx(440, abs=1)


@pytest.mark.parametrize("fmt,sr", [("WAV", 22050), ("FLAC", 44100), ("OGG", 48000), ("WAV", 8000)])
def test_read_segment_matches_cut_of_whole_recording(tmp_path, fmt, sr):
    # A range read decodes from a seek point and resamples only its frames; it must give the
    # same samples as resampling the whole recording and cutting it.
    uri = str(tmp_path / f"a.{fmt.lower()}")
    sf.write(uri, _stereo(sr, 3.0), sr, format=fmt)
    rec = read_recording(uri)
    for start, end, channel in [(0.5, 1.25, 0), (1.0, 2.0, 1), (0.0, 0.3, None), (2.5, None, 1)]:
        ranged = read_segment(uri, start, end, channel)
        cut = cut_segment(rec, start, end, channel)
        n = round(((end or 3.0) - start) * SAMPLE_RATE)
        assert ranged.shape == cut.shape == (n,)
        assert ranged.dtype == np.float32
        # Same samples up to the resampler's edge effects far from the cut.
        assert np.abs(ranged - cut).max() < 1e-5


def test_channel_none_is_mean_and_channels_differ(stereo_wav):
    rec = read_recording(stereo_wav)
    left, right = (cut_segment(rec, 0.5, 1.0, c) for c in (0, 1))
    assert not np.allclose(left, right)
    np.testing.assert_allclose(cut_segment(rec, 0.5, 1.0, None), (left + right) / 2, atol=1e-6)


def test_segment_end_within_tolerance_is_clamped(stereo_wav):
    seg = read_segment(stereo_wav, 2.9, 3.04, 0)
    assert seg.shape == (round(0.1 * SAMPLE_RATE),)


def test_native_16k_is_not_resampled(tmp_path):
    x = _stereo(SAMPLE_RATE, 1.0)[:, 0]
    path = tmp_path / "mono.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(read_segment(str(path), 0.25, 0.5), x[4000:8000])


def test_encode_and_write_round_trip(tmp_path):
    x = _stereo(SAMPLE_RATE, 0.5).T
    flac = encode_audio(x, SAMPLE_RATE, "FLAC")
    assert flac[:4] == b"fLaC" and flac == encode_audio(x, SAMPLE_RATE, "FLAC")  # deterministic
    uri = str(tmp_path / "sub" / "out.flac")
    write_audio(uri, x, SAMPLE_RATE)
    back = read_recording(uri).samples
    assert np.abs(back - x).max() < 1e-4  # 16-bit quantization
    mono_uri = str(tmp_path / "mono.wav")
    write_audio(mono_uri, x[0] * 3, SAMPLE_RATE)  # out of range: clipped, not wrapped
    assert read_recording(mono_uri).samples.max() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ConfigError, match="extension"):
        write_audio(str(tmp_path / "out.xyz"), x, SAMPLE_RATE)


# --- bad input: each case raises a typed error naming the URI and the problem ---------------


def _wav_bytes(tmp_path) -> bytes:
    path = tmp_path / "good.wav"
    sf.write(path, _stereo(SAMPLE_RATE, 0.5)[:, 0], SAMPLE_RATE)
    return path.read_bytes()


def _bad_file(tmp_path, name: str, payload: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(payload)
    return str(path)


@pytest.mark.parametrize("reader", [probe_audio, read_recording, read_segment])
def test_missing_file(tmp_path, reader):
    uri = str(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="not found") as info:
        reader(uri)
    assert uri in str(info.value) and info.value.uri == uri
    assert isinstance(info.value, BadInputError)


def test_empty_file_zero_bytes(tmp_path):
    uri = _bad_file(tmp_path, "empty.wav", b"")
    with pytest.raises(AudioError, match=r"empty \(0 bytes\)") as info:
        read_segment(uri, 0.0, 0.1)
    assert uri in str(info.value)


def test_header_without_frames(tmp_path):
    uri = _bad_file(tmp_path, "noframes.wav", _wav_bytes(tmp_path)[:44])
    with pytest.raises(AudioError, match="0 frames") as info:
        read_recording(uri)
    assert uri in str(info.value)


def test_truncated_header(tmp_path):
    uri = _bad_file(tmp_path, "trunc.wav", _wav_bytes(tmp_path)[:30])
    with pytest.raises(AudioError, match="corrupt or truncated WAV header") as info:
        probe_audio(uri)
    assert uri in str(info.value)


def test_truncated_flac(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, _stereo(SAMPLE_RATE, 0.5), SAMPLE_RATE)
    uri = _bad_file(tmp_path, "trunc.flac", path.read_bytes()[:30])
    with pytest.raises(AudioError, match="corrupt or truncated FLAC header"):
        read_recording(uri)


def test_garbage_bytes(tmp_path):
    uri = _bad_file(tmp_path, "garbage.wav", bytes(range(256)) * 8)
    with pytest.raises(AudioError, match="unrecognised or unsupported audio format") as info:
        read_recording(uri)
    assert uri in str(info.value)


def test_unsupported_wav_codec(tmp_path):
    good = _wav_bytes(tmp_path)
    ac3 = good[:20] + struct.pack("<H", 0x2000) + good[22:]  # WAVE_FORMAT_DOLBY_AC3
    uri = _bad_file(tmp_path, "ac3.wav", ac3)
    with pytest.raises(AudioError, match="unsupported WAV codec 0x2000"):
        read_segment(uri)


def test_unsupported_container_says_how_to_extract(tmp_path):
    uri = _bad_file(tmp_path, "dia0_utt0.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    with pytest.raises(AudioError, match="unsupported format MP4.*ffmpeg") as info:
        probe_audio(uri)
    assert uri in str(info.value)


def test_all_silence_recording(tmp_path):
    path = tmp_path / "silence.flac"
    sf.write(path, np.zeros((SAMPLE_RATE, 2), np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="all silence") as info:
        read_recording(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad):
    x = _stereo(SAMPLE_RATE, 0.5)
    x[1234, 1] = bad
    path = tmp_path / "nan.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    for read in (lambda: read_recording(str(path)), lambda: read_segment(str(path), 0.0, 0.2, 0)):
        with pytest.raises(AudioError, match="1 NaN/inf samples") as info:
            read()
        assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "start,end,channel,message",
    [
        (1.0, 3.2, 0, "outside the recording"),
        (3.5, None, 0, "outside the recording"),
        (-0.1, 1.0, 0, "negative segment time"),
        (0.5, -1.0, 0, "negative segment time"),
        (2.0, 1.0, 0, "reversed or empty segment"),
        (1.0, 1.0, 0, "reversed or empty segment"),
        (0.0, float("nan"), 0, "must be finite"),
        (1.0, 1.00001, 0, "shorter than one sample"),
        (0.0, 1.0, 2, "channel 2 out of range for a 2-channel recording"),
        (0.0, 1.0, -1, "channel -1 out of range"),
    ],
)
def test_bad_segments(stereo_wav, start, end, channel, message):
    rec = read_recording(stereo_wav)
    for cut in (
        lambda: read_segment(stereo_wav, start, end, channel),
        lambda: cut_segment(rec, start, end, channel),
    ):
        with pytest.raises(SegmentError, match=message) as info:
            cut()
        assert stereo_wav in str(info.value)
