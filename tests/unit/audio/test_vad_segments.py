"""VAD on real (espeak-ng) speech and the manifest-rows-to-segments rules."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from dpm_worker.audio import SAMPLE_RATE, conversation_segments, detect_speech, read_segment
from dpm_worker.corpus import UtteranceRow
from dpm_worker.errors import AudioError, SegmentError

ESPEAK_SR = 22050
# Where each turn of the synthetic stereo conversation starts, and on which channel.
TURNS = [(0.5, 0), (3.5, 1), (6.5, 0)]
SENTENCES = [
    ("en", "Good morning, I would like to talk about the report."),
    ("en+f3", "Of course, I read it yesterday evening."),
]


def _speak(tmp_path, voice: str, text: str) -> np.ndarray:
    path = tmp_path / f"{voice}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    samples, sr = sf.read(path, dtype="float32")
    assert sr == ESPEAK_SR
    return samples


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Two espeak-ng utterances (22.05 kHz mono), one per voice."""
    tmp = tmp_path_factory.mktemp("speech")
    return [_speak(tmp, voice, text) for voice, text in SENTENCES]


@pytest.fixture(scope="module")
def conversation(tmp_path_factory, speech):
    """A stereo FLAC with one speaker per channel; returns (uri, [(start, end, channel)])."""
    total = round(10.0 * ESPEAK_SR)
    audio = np.zeros((total, 2), np.float32)
    truth = []
    for i, (start, channel) in enumerate(TURNS):
        utterance = speech[i % 2]
        first = round(start * ESPEAK_SR)
        audio[first : first + len(utterance), channel] = utterance
        truth.append((start, start + len(utterance) / ESPEAK_SR, channel))
    path = tmp_path_factory.mktemp("conv") / "conv.flac"
    sf.write(path, audio, ESPEAK_SR)
    return str(path), truth


def _row(uri: str, index: int = 0, speaker: str = "", **kwargs) -> UtteranceRow:
    return UtteranceRow("c1", index, speaker, uri, **kwargs)


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def test_detect_speech_finds_each_utterance(speech):
    gap = np.zeros(ESPEAK_SR, np.float32)
    signal = np.concatenate([gap, speech[0], gap, speech[1], gap])
    truth = [(1.0, 1.0 + len(speech[0]) / ESPEAK_SR)]
    truth.append((truth[0][1] + 1.0, truth[0][1] + 1.0 + len(speech[1]) / ESPEAK_SR))
    found = detect_speech(signal, ESPEAK_SR)  # resampled to 16 kHz inside
    assert len(found) == 2
    for (start, end), (t_start, t_end) in zip(found, truth, strict=True):
        assert abs(start - t_start) < 0.3 and abs(end - t_end) < 0.3


def test_detect_speech_ignores_tones_noise_and_silence():
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    assert detect_speech((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)) == []
    noise = 0.05 * np.random.default_rng(0).standard_normal(t.size)
    assert detect_speech(noise.astype(np.float32)) == []
    assert detect_speech(np.zeros(t.size, np.float32)) == []


def test_vad_import_keeps_torch_threads():
    # silero_vad sets torch threads to 1 on import; a fresh process shows we restore them.
    code = (
        "import numpy as np, torch; torch.set_num_threads(2);"
        "from dpm_worker.audio.vad import detect_speech; detect_speech(np.zeros(16000, np.float32));"
        "print(torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "2"


def test_unsegmented_stereo_recording_becomes_turns_per_channel(conversation):
    uri, truth = conversation
    segments = conversation_segments([_row(uri, speaker="call")])
    assert [s.utterance_index for s in segments] == [0, 1, 2]
    assert [s.speaker for s in segments] == ["ch0", "ch1", "ch0"]
    assert [s.channel for s in segments] == [0, 1, 0]
    for seg, (start, end, _) in zip(segments, truth, strict=True):
        assert _overlap((seg.start_s, seg.end_s), (start, end)) > 0.8 * (end - start)
        assert seg.samples.dtype == np.float32
        assert seg.samples.shape == (
            round(seg.end_s * SAMPLE_RATE) - round(seg.start_s * SAMPLE_RATE),
        )
        assert seg.emotion is None and seg.audio_uri == uri
    # A turn's samples are its channel's audio, not the mix.
    np.testing.assert_allclose(
        segments[1].samples, read_segment(uri, segments[1].start_s, segments[1].end_s, 1), atol=1e-5
    )


def test_unsegmented_row_with_channel_uses_that_channel_and_speaker(conversation):
    uri, _ = conversation
    segments = conversation_segments([_row(uri, speaker="bob", channel=1)])
    assert [(s.speaker, s.channel) for s in segments] == [("bob", 1)]


def test_unsegmented_mono_recording_keeps_row_speaker(tmp_path, speech):
    gap = np.zeros(ESPEAK_SR // 2, np.float32)
    path = tmp_path / "mono.wav"
    sf.write(path, np.concatenate([gap, speech[0], gap, speech[1], gap]), ESPEAK_SR)
    segments = conversation_segments([_row(str(path), speaker="alice")])
    assert [(s.utterance_index, s.speaker, s.channel) for s in segments] == [
        (0, "alice", None),
        (1, "alice", None),
    ]
    unnamed = conversation_segments([_row(str(path), speaker="")])
    assert {s.speaker for s in unnamed} == {"unknown"}


def test_timed_rows_are_cut_and_keep_their_fields(conversation):
    uri, truth = conversation
    rows = [
        _row(uri, i, f"spk{ch}", start_s=s, end_s=e, channel=ch, emotion="happy")
        for i, (s, e, ch) in enumerate(truth)
    ]
    shared = conversation_segments(rows)  # one recording, several rows: decoded once
    single = conversation_segments(rows[1:2])  # one row: range read
    assert [(s.utterance_index, s.speaker, s.emotion) for s in shared] == [
        (0, "spk0", "happy"),
        (1, "spk1", "happy"),
        (2, "spk0", "happy"),
    ]
    assert shared[1].start_s == truth[1][0]
    assert shared[1].end_s == pytest.approx(truth[1][1], abs=1 / SAMPLE_RATE)
    np.testing.assert_allclose(shared[1].samples, single[0].samples, atol=1e-5)


def test_clip_per_utterance_rows_are_whole_files(tmp_path, speech):
    rows = []
    for i, utterance in enumerate(speech):
        path = tmp_path / f"dia0_utt{i}.wav"
        sf.write(path, utterance, ESPEAK_SR)
        rows.append(_row(str(path), i, f"s{i}", emotion="sad"))
    segments = conversation_segments(rows)
    assert [(s.utterance_index, s.speaker, s.start_s) for s in segments] == [
        (0, "s0", 0.0),
        (1, "s1", 0.0),
    ]
    for seg, utterance in zip(segments, speech, strict=True):
        assert seg.end_s == pytest.approx(len(utterance) / ESPEAK_SR, abs=1 / SAMPLE_RATE)
    # Forcing VAD treats each file as an unsegmented recording instead.
    forced = conversation_segments(rows, vad=True)
    assert len(forced) >= 2 and all(s.emotion is None for s in forced)


def test_vad_finds_no_speech(tmp_path):
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    path = tmp_path / "hum.wav"
    sf.write(path, 0.3 * np.sin(2 * np.pi * 120 * t), SAMPLE_RATE)
    with pytest.raises(AudioError, match="VAD found no speech") as info:
        conversation_segments([_row(str(path))])
    assert str(path) in str(info.value)


def test_all_silent_recording(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((SAMPLE_RATE, 2), np.float32), SAMPLE_RATE)
    uri = str(path)
    cases = [
        [_row(uri)],  # VAD path
        [_row(uri, 0, "a", start_s=0.1, end_s=0.5)],  # range-read path
        [_row(uri, 0, "a", start_s=0.1, end_s=0.5), _row(uri, 1, "b", start_s=0.5, end_s=0.9)],
    ]
    for rows in cases:
        with pytest.raises(AudioError, match="silence") as info:
            conversation_segments(rows)
        assert uri in str(info.value)


def test_bad_rows(conversation):
    uri, _ = conversation
    with pytest.raises(SegmentError, match="outside the recording"):
        conversation_segments([_row(uri, 0, "a", start_s=9.0, end_s=11.0)])
    with pytest.raises(SegmentError, match="reversed"):
        conversation_segments(
            [_row(uri, 0, "a", start_s=2.0, end_s=1.0), _row(uri, 1, "b", start_s=3.0, end_s=4.0)]
        )
    with pytest.raises(SegmentError, match="channel 3 out of range"):
        conversation_segments([_row(uri, channel=3)])
    with pytest.raises(SegmentError, match="mixes rows"):
        conversation_segments([_row(uri, 0), _row(uri, 1, start_s=1.0, end_s=2.0)], vad=True)
    other = UtteranceRow("c2", 1, "b", uri, start_s=1.0, end_s=2.0)
    with pytest.raises(SegmentError, match="several conversations"):
        conversation_segments([_row(uri, 0, start_s=0.0, end_s=1.0), other])
    assert conversation_segments([]) == []


def test_a_row_that_fails_alone_is_reported_and_the_rest_read(conversation, tmp_path):
    uri, _ = conversation
    corrupt = tmp_path / "clip.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    rows = [
        _row(uri, 0, "a", start_s=0.5, end_s=2.0, channel=0),
        _row(uri, 1, "b", start_s=11.0, end_s=12.0, channel=1),  # past the end (10 s)
        _row(str(corrupt), 2, "a", start_s=0.0, end_s=1.0),  # its own clip, undecodable
        _row(uri, 3, "b", start_s=3.5, end_s=5.0, channel=1),
    ]
    failed = []
    segments = conversation_segments(rows, on_row_error=lambda row, exc: failed.append((row, exc)))
    assert [s.utterance_index for s in segments] == [0, 3]
    assert [(row.utterance_index, type(exc).__name__) for row, exc in failed] == [
        (1, "SegmentError"),
        (2, "AudioError"),
    ]
    with pytest.raises(SegmentError, match="outside the recording"):
        conversation_segments(rows)  # without the callback the conversation fails, as before
    # A recording shared by several rows that cannot be decoded fails them all.
    shared = [_row(str(corrupt), i, "a", start_s=i, end_s=i + 0.5) for i in range(2)]
    with pytest.raises(AudioError):
        conversation_segments(shared, on_row_error=lambda row, exc: None)
