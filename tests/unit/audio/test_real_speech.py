"""VAD, over-long region cutting and RTTM segmentation on real meeting speech (AMI excerpts,
CC BY 4.0; tests/fixtures/real_speech/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dpm_worker.audio import (
    SAMPLE_RATE,
    SegmentsConfig,
    conversation_segments,
    detect_speech,
    split_at_quietest,
)
from dpm_worker.corpus import UtteranceRow, read_rttm
from dpm_worker.errors import DiarizationError

FIXTURES = Path(__file__).parents[2] / "fixtures" / "real_speech"
FRAME_S = 0.01


def _mask(spans, n_frames: int) -> np.ndarray:
    mask = np.zeros(n_frames, bool)
    for start, end in spans:
        mask[round(start / FRAME_S) : round(end / FRAME_S)] = True
    return mask


@pytest.fixture(scope="module", params=["dev00", "tst00"])
def meeting(request):
    """(name, samples, reference turns) of one excerpt."""
    samples, sr = sf.read(FIXTURES / f"{request.param}.flac", dtype="float32")
    assert sr == SAMPLE_RATE and samples.ndim == 1
    return request.param, samples, read_rttm(str(FIXTURES / f"{request.param}.rttm"))


def test_vad_covers_reference_speech(meeting):
    name, samples, turns = meeting
    n = round(samples.size / SAMPLE_RATE / FRAME_S) + 1
    reference = _mask([(t.start_s, t.end_s) for t in turns], n)
    found = _mask(detect_speech(samples), n)
    coverage = (found & reference).sum() / reference.sum()
    in_silence = (found & ~reference).sum() / found.sum()
    assert coverage >= 0.85, f"{name}: VAD covers {coverage:.1%} of reference speech"
    assert in_silence <= 0.15, f"{name}: {in_silence:.1%} of VAD speech is reference silence"


def test_unsegmented_meeting_gives_segments_that_fit(meeting):
    name, samples, _ = meeting
    row = UtteranceRow("m", 0, "unknown", str(FIXTURES / f"{name}.flac"))
    whole = conversation_segments([row])
    cut = conversation_segments([row], max_segment_s=4.0)
    assert max(s.end_s - s.start_s for s in whole) > 4.0  # something had to be cut
    assert all(s.samples.size <= 4.0 * SAMPLE_RATE for s in cut)
    assert all(s.speaker == "unknown" and s.channel is None for s in cut)
    assert [s.utterance_index for s in cut] == list(range(len(cut)))
    # Cutting drops nothing: the pieces tile exactly the regions VAD found.
    assert sum(s.samples.size for s in cut) == pytest.approx(
        sum(s.samples.size for s in whole), abs=len(cut)
    )
    assert sum(s.pieces > 1 for s in cut) > 0
    for seg in cut:
        expected = samples[round(seg.start_s * SAMPLE_RATE) : round(seg.end_s * SAMPLE_RATE)]
        np.testing.assert_array_equal(seg.samples, expected)


def test_rttm_turns_become_segments_with_their_speakers(meeting):
    name, _, turns = meeting
    rttm_uri = str(FIXTURES / f"{name}.rttm")
    row = UtteranceRow("m", 0, "unknown", str(FIXTURES / f"{name}.flac"), rttm_uri=rttm_uri)
    segments = conversation_segments([row], max_segment_s=10.0, diarizations={rttm_uri: turns})
    # One segment per reference turn, or its pieces when longer than 10 s.
    long = [t for t in turns if t.end_s - t.start_s > 10.0]
    assert len(segments) == len(turns) + sum(
        int(np.ceil((t.end_s - t.start_s) / 10.0)) - 1 for t in long
    )
    whole = [s for s in segments if s.pieces == 1]
    assert [(s.speaker, s.start_s, s.end_s) for s in whole] == [
        (t.speaker, t.start_s, min(t.end_s, 30.0)) for t in turns if t.end_s - t.start_s <= 10.0
    ]
    assert {s.speaker for s in segments} == {t.speaker for t in turns}
    assert all(s.end_s - s.start_s <= 10.0 for s in segments)


def test_rttm_of_another_recording_fails(tmp_path):
    rttm = tmp_path / "x.rttm"
    rttm.write_text("SPEAKER x 1 45.0 2.0 <NA> <NA> A <NA> <NA>\n")
    row = UtteranceRow("m", 0, "unknown", str(FIXTURES / "dev00.flac"), rttm_uri=str(rttm))
    with pytest.raises(DiarizationError, match="past the end"):
        conversation_segments([row], diarizations={str(rttm): read_rttm(str(rttm))})


def test_split_at_quietest_cuts_in_the_pause():
    rng = np.random.default_rng(0)
    loud = (0.3 * rng.standard_normal(SAMPLE_RATE * 20)).astype(np.float32)
    loud[round(7.0 * SAMPLE_RATE) : round(7.3 * SAMPLE_RATE)] *= 0.01  # the one pause, at 7.0-7.3 s
    pieces = split_at_quietest(loud, SAMPLE_RATE, 0.0, 20.0, 15.0)
    assert len(pieces) == 2
    assert 7.0 <= pieces[0][1] <= 7.3
    assert pieces[0][0] == 0.0 and pieces[-1][1] == 20.0
    # A cut that would leave more pieces than needed is not taken: with 10 s pieces the pause
    # at 7 s cannot be used (the rest, 13 s, would need two more).
    pieces = split_at_quietest(loud, SAMPLE_RATE, 0.0, 20.0, 10.0)
    assert len(pieces) == 2 and pieces[0][1] == pytest.approx(10.0)
    assert split_at_quietest(loud, SAMPLE_RATE, 2.0, 9.0, 10.0) == [(2.0, 9.0)]


def test_split_at_quietest_gives_fewest_pieces_within_the_limit():
    rng = np.random.default_rng(1)
    signal = (0.3 * rng.standard_normal(SAMPLE_RATE * 61)).astype(np.float32)
    for max_s in (4.0, 7.5, 15.28):
        pieces = split_at_quietest(signal, SAMPLE_RATE, 0.5, 60.5, max_s)
        assert len(pieces) == int(np.ceil(60.0 / max_s))
        assert all(b - a <= max_s + 1e-9 for a, b in pieces)
        assert all(a1 == b0 for (_, b0), (a1, _) in zip(pieces, pieces[1:], strict=False))


def test_mono_meeting_without_rttm_gives_turn_sized_segments(meeting):
    """VAD regions span several speakers; the default ``segments.max_s`` cuts them at pauses
    into turn-sized segments that still cover the reference speech."""
    name, samples, turns = meeting
    row = UtteranceRow("m", 0, "unknown", str(FIXTURES / f"{name}.flac"))
    max_s = SegmentsConfig().max_s
    assert max_s is not None
    fits = 15.2  # what the default model reads whole: the only cut before
    regions = conversation_segments([row], max_segment_s=fits)
    segments = conversation_segments([row], max_segment_s=fits, turn_max_s=max_s)
    n = round(samples.size / SAMPLE_RATE / FRAME_S) + 1
    reference = _mask([(t.start_s, t.end_s) for t in turns], n)
    found = _mask([(s.start_s, s.end_s) for s in segments], n)
    assert (found & reference).sum() / reference.sum() >= 0.85
    durations = np.array([s.end_s - s.start_s for s in segments])
    turn_median = float(np.median([t.end_s - t.start_s for t in turns]))
    # Turn-sized: none longer than max_s, the median within 2.5x the reference turns' (measured
    # 1.03x on dev00, 2.02x on tst00, whose four speakers overlap), where the uncut regions'
    # median was 2.3x and 5.6x.
    assert durations.max() <= max_s + 1 / SAMPLE_RATE
    assert np.median(durations) <= 2.5 * turn_median
    assert len(segments) > len(regions)
    # Cut at pauses, never dropped: the pieces tile the regions.
    assert durations.sum() == pytest.approx(sum(s.end_s - s.start_s for s in regions), abs=1e-3)


def test_stereo_channels_and_rttm_turns_are_not_cut_into_turns(meeting, tmp_path):
    """``turn_max_s`` applies to mono VAD regions only: channels and RTTM turns are turns."""
    name, samples, turns = meeting
    stereo = tmp_path / "stereo.wav"
    half = samples.size // 2
    sf.write(stereo, np.stack([samples[:half], samples[half : 2 * half]], axis=1), SAMPLE_RATE)
    row = UtteranceRow("m", 0, "unknown", str(stereo))
    spans = [
        (s.speaker, s.start_s, s.end_s) for s in conversation_segments([row], max_segment_s=15.2)
    ]
    assert any(end - start > 2.0 for _, start, end in spans)  # something a 2 s limit would cut
    assert [
        (s.speaker, s.start_s, s.end_s)
        for s in conversation_segments([row], max_segment_s=15.2, turn_max_s=2.0)
    ] == spans
    rttm_uri = str(FIXTURES / f"{name}.rttm")
    diarized = UtteranceRow("m", 0, "unknown", str(FIXTURES / f"{name}.flac"), rttm_uri=rttm_uri)
    by_rttm = {"diarizations": {rttm_uri: turns}, "max_segment_s": 15.2}
    assert [(s.start_s, s.end_s) for s in conversation_segments([diarized], **by_rttm)] == [
        (s.start_s, s.end_s) for s in conversation_segments([diarized], turn_max_s=2.0, **by_rttm)
    ]
