"""The RTTM reader: SPEAKER lines, other records skipped, bad lines named."""

from __future__ import annotations

import pytest

from dpm_worker.corpus import SpeakerTurn, parse_rttm, read_rttm
from dpm_worker.errors import DiarizationError

TEXT = """\
# written by a diarizer
SPKR-INFO rec 1 <NA> <NA> <NA> unknown A <NA> <NA>
SPEAKER rec 1 3.50 1.25 <NA> <NA> B <NA> <NA>
SPEAKER rec 1 0.00 4.00 <NA> <NA> A <NA> <NA>

SPEAKER rec 1 3.50 0.5 <NA> <NA> MÉO069
"""


def test_parse_keeps_speaker_lines_sorted_by_time():
    turns = parse_rttm(TEXT)
    assert turns == [
        SpeakerTurn("rec", "A", 0.0, 4.0),
        SpeakerTurn("rec", "MÉO069", 3.5, 4.0),
        SpeakerTurn("rec", "B", 3.5, 4.75),
    ]


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("SPEAKER rec 1 0.0 1.0 <NA> <NA>", "needs at least 8"),
        ("SPEAKER rec 1 zero 1.0 <NA> <NA> A", "not numbers"),
        ("SPEAKER rec 1 -1.0 1.0 <NA> <NA> A", "onset >= 0"),
        ("SPEAKER rec 1 1.0 0.0 <NA> <NA> A", "duration > 0"),
        ("SPEAKER rec 1 nan 1.0 <NA> <NA> A", "onset >= 0"),
    ],
)
def test_bad_lines_are_named(line, match):
    with pytest.raises(DiarizationError, match=match) as info:
        parse_rttm("SPEAKER rec 1 0.0 1.0 <NA> <NA> A <NA> <NA>\n" + line, "x.rttm")
    assert "line 2" in str(info.value) and "x.rttm" in str(info.value)


def test_read_picks_the_recording_by_file_name(tmp_path):
    path = tmp_path / "all.rttm"
    path.write_text(
        "SPEAKER one 1 0.0 1.0 <NA> <NA> A <NA> <NA>\nSPEAKER two 1 2.0 1.0 <NA> <NA> B <NA> <NA>\n"
    )
    assert read_rttm(str(path), "s3://b/audio/two.flac") == [SpeakerTurn("two", "B", 2.0, 3.0)]
    with pytest.raises(DiarizationError, match="none is 'three'"):
        read_rttm(str(path), "three.wav")


def test_read_fails_on_missing_or_empty(tmp_path):
    with pytest.raises(DiarizationError, match="not found"):
        read_rttm(str(tmp_path / "absent.rttm"))
    empty = tmp_path / "empty.rttm"
    empty.write_text("# nothing\n")
    with pytest.raises(DiarizationError, match="no SPEAKER"):
        read_rttm(str(empty))
