"""DER against hand-made RTTMs, and against pyannote.metrics (the field's implementation)."""

from __future__ import annotations

import numpy as np
import pytest

from dpm_worker.corpus import SpeakerTurn, format_rttm, parse_rttm
from dpm_worker.diarization import diarization_error
from dpm_worker.errors import ConfigError, DiarizationError


def _turns(text: str) -> list[SpeakerTurn]:
    """'A 0 10, B 10 20' -> turns."""
    out = []
    for item in text.split(","):
        name, start, end = item.split()
        out.append(SpeakerTurn("f", name, float(start), float(end)))
    return out


def test_confusion_counted_after_the_best_mapping():
    ref, hyp = _turns("A 0 10, B 10 20"), _turns("y 0 12, x 12 20")
    parts = diarization_error(ref, hyp, duration_s=20.0, collar_s=0.0)
    assert parts == pytest.approx(
        {"missed": 0.0, "false_alarm": 0.0, "confusion": 2.0, "total": 20.0, "der": 0.1}
    )


def test_collar_removes_each_side_of_every_reference_boundary():
    ref, hyp = _turns("A 0 10, B 10 20"), _turns("y 0 12, x 12 20")
    parts = diarization_error(ref, hyp, duration_s=20.0, collar_s=0.25)
    # scored: 20 s less [0, 0.25], [9.75, 10.25] and [19.75, 20]; confused: [10.25, 12]
    assert parts["total"] == pytest.approx(19.0)
    assert parts["confusion"] == pytest.approx(1.75)
    assert parts["der"] == pytest.approx(1.75 / 19.0)


def test_missed_false_alarm_and_overlap():
    ref, hyp = _turns("A 0 5, A 6 10, B 8 12"), _turns("x 0 4, x 6 12, z 14 15")
    parts = diarization_error(ref, hyp, duration_s=16.0, collar_s=0.0)
    # missed: [4, 5] (A) and [8, 10] (two speak, one found); false alarm: [14, 15];
    # confusion: [10, 12] is B heard as x, which maps to A
    assert parts == pytest.approx(
        {"missed": 3.0, "false_alarm": 1.0, "confusion": 2.0, "total": 13.0, "der": 6.0 / 13.0}
    )


def test_perfect_hypothesis_and_bad_arguments():
    ref = _turns("A 0 3, B 3.5 7")
    renamed = [
        SpeakerTurn("f", {"A": "spk1", "B": "spk0"}[t.speaker], t.start_s, t.end_s) for t in ref
    ]
    assert diarization_error(ref, renamed, duration_s=8.0)["der"] == 0.0
    with pytest.raises(ConfigError, match="duration_s"):
        diarization_error(ref, renamed, duration_s=0.0)
    with pytest.raises(ConfigError, match="collar_s"):
        diarization_error(ref, renamed, duration_s=8.0, collar_s=-1.0)


def _random_turns(rng: np.random.Generator, names: str, duration: float) -> list[SpeakerTurn]:
    out, t, last = [], 0.0, ""
    while True:
        t += float(rng.integers(0, 1500)) / 1000
        length = float(rng.integers(200, 4000)) / 1000
        if t + length >= duration:
            return out
        last = str(rng.choice([n for n in names if n != last]))  # nobody overlaps themselves
        out.append(SpeakerTurn("f", last, t, t + length))
        if rng.random() < 0.3:  # overlap the next turn with this one
            t -= float(rng.integers(0, 800)) / 1000
        t += length


@pytest.mark.parametrize("seed", range(5))
def test_matches_pyannote_metrics(seed):
    pytest.importorskip("pyannote.metrics")
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    rng = np.random.default_rng(seed)
    ref, hyp = _random_turns(rng, "ABC", 60.0), _random_turns(rng, "xyzw", 60.0)

    def annotation(turns):
        found = Annotation()
        for i, turn in enumerate(turns):
            found[Segment(turn.start_s, turn.end_s), i] = turn.speaker
        return found

    for collar in (0.0, 0.25):
        theirs = DiarizationErrorRate(collar=2 * collar)(
            annotation(ref), annotation(hyp), uem=Timeline([Segment(0, 60.0)]), detailed=True
        )
        mine = diarization_error(ref, hyp, duration_s=60.0, collar_s=collar)
        assert mine["total"] == pytest.approx(theirs["total"], abs=2e-3)
        assert mine["missed"] == pytest.approx(theirs["missed detection"], abs=2e-3)
        assert mine["false_alarm"] == pytest.approx(theirs["false alarm"], abs=2e-3)
        assert mine["confusion"] == pytest.approx(theirs["confusion"], abs=2e-3)


def test_rttm_written_reads_back():
    turns = _turns("spk0 0.5 2.25, spk1 2.0 4.0")
    assert parse_rttm(format_rttm(turns)) == turns
    with pytest.raises(DiarizationError, match="whitespace"):
        format_rttm([SpeakerTurn("f", "two words", 0.0, 1.0)])
    with pytest.raises(DiarizationError, match="start < end"):
        format_rttm([SpeakerTurn("f", "a", 1.0, 1.0)])
