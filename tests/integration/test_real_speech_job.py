"""Real meeting speech through the Ray job (AMI excerpts, CC BY 4.0; see
tests/fixtures/real_speech/README.md): unsegmented with VAD, with the reference RTTM, and one
impossible utterance among twenty good ones."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpm_worker.audio import SegmentsConfig, conversation_segments
from dpm_worker.corpus import UtteranceRow, read_rttm
from dpm_worker.storage import get_filesystem
from tests.integration.conftest import REPO, run_label, upload
from tests.integration.test_label_job import read_table

pytestmark = pytest.mark.integration

# One small actor: the cluster has 2 CPUs shared with the test process (and, on a loaded
# machine, model loading can take minutes).
JOB = ["--actors", "1", "--cpus-per-actor", "0.5"]

FIXTURES = REPO / "tests" / "fixtures" / "real_speech"
MEETINGS = ("dev00", "tst00")
# The model below reads 256 tokens; the worker cuts segments to 253 audio tokens at 25 Hz
# (<spk>, <audio_end> and one token of margin) = 10.12 s, so dev00's 11.87 s and tst00's
# 10.15 s reference turns and tst00's 18 s VAD region are cut to be read whole.
CONTEXT = 256
MAX_SEGMENT_S = (CONTEXT - 3) / 25.0


@pytest.fixture(scope="module")
def short_model(tmp_path_factory):
    from dpm_worker.model import EmotionModel, save_model

    folder = tmp_path_factory.mktemp("model") / "short"
    save_model(EmotionModel.random(seed=0, max_context=CONTEXT), str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def meetings(tmp_path_factory, local_s3):
    """The fixtures on S3 with three manifests: VAD, RTTM, and 21 timed rows (one impossible)."""
    folder = tmp_path_factory.mktemp("meetings")
    (folder / "audio").mkdir()
    (folder / "rttm").mkdir()
    for name in MEETINGS:
        shutil.copy(FIXTURES / f"{name}.flac", folder / "audio")
        shutil.copy(FIXTURES / f"{name}.rttm", folder / "rttm")
    base = {"utterance_index": 0, "speaker": "unknown"}
    vad = [{**base, "conversation_id": n, "audio_uri": f"audio/{n}.flac"} for n in MEETINGS]
    rttm = [{**row, "rttm_uri": f"rttm/{row['conversation_id']}.rttm"} for row in vad]
    timed = [
        {
            "conversation_id": "dev00_timed",
            "utterance_index": i,
            "speaker": "unknown",
            "audio_uri": "audio/dev00.flac",
            "start_s": 1.4 * i,
            "end_s": 1.4 * i + 1.4,
        }
        for i in range(21)
    ]
    timed[13].update(start_s=41.0, end_s=42.5)  # the recording lasts 30 s
    for name, rows in (("vad", vad), ("rttm", rttm), ("timed", timed)):
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{name}.parquet")
    bucket = "real-speech"
    local_s3.create_bucket(bucket)
    upload(folder, f"s3://{bucket}/in")
    return f"s3://{bucket}/in"


def _label(meetings, manifest, out, ray_address, model):
    return run_label(
        "--input",
        f"{meetings}/{manifest}.parquet",
        "--output",
        out,
        "--model",
        model,
        "--address",
        ray_address,
        *JOB,
        timeout=900,
    )


def test_unsegmented_meeting_every_segment_labeled(meetings, ray_address, short_model):
    out = "s3://real-speech/out-vad"
    result = _label(meetings, "vad", out, ray_address, short_model)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    emotions, errors = read_table(out, "emotions"), read_table(out, "errors")
    assert errors.empty
    for name in MEETINGS:
        rows = emotions[emotions["conversation_id"] == name].sort_values("utterance_index")
        row = UtteranceRow(name, 0, "unknown", str(FIXTURES / f"{name}.flac"))
        # the job's rules: VAD regions cut to what the model reads, then into turns (mono)
        expected = conversation_segments(
            [row], max_segment_s=MAX_SEGMENT_S, turn_max_s=SegmentsConfig().max_s
        )
        assert list(rows["utterance_index"]) == list(range(len(expected)))
        np.testing.assert_allclose(rows["start_s"], [s.start_s for s in expected])
        np.testing.assert_allclose(rows["end_s"], [s.end_s for s in expected])
        assert set(rows["speaker"]) == {"unknown"}
        assert (rows["end_s"] - rows["start_s"]).max() <= SegmentsConfig().max_s + 1e-9
    split = emotions[emotions["conversation_id"] == "tst00"]
    assert (split["end_s"] - split["start_s"]).sum() > 25.0  # the long regions are all there
    fs, path = get_filesystem(out)
    success = json.loads(fs.cat_file(f"{path}/_runs/{_run_id(fs, path)}/_SUCCESS"))
    assert success["this_session"]["split_segments"] >= 2


def test_unsegmented_meeting_diarized(meetings, ray_address, short_model):
    """A mono two-speaker recording without RTTM, diarized on the fly: two speakers."""
    from dpm_worker.diarization import DiarizationConfig

    out = "s3://real-speech/out-diarized"
    result = run_label(
        "--input", f"{meetings}/vad.parquet", "--output", out, "--model", short_model,
        "--address", ray_address, *JOB, "segments.diarization.enabled=true", timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    emotions = read_table(out, "emotions")
    assert read_table(out, "errors").empty
    rows = emotions[emotions["conversation_id"] == "dev00"].sort_values("utterance_index")
    assert set(rows["speaker"]) == {"spk0", "spk1"}
    row = UtteranceRow("dev00", 0, "unknown", str(FIXTURES / "dev00.flac"))
    expected = conversation_segments(
        [row],
        max_segment_s=MAX_SEGMENT_S,
        turn_max_s=SegmentsConfig().max_s,
        diarization=DiarizationConfig(enabled=True),
    )
    assert list(rows["speaker"]) == [s.speaker for s in expected]
    np.testing.assert_allclose(rows["start_s"], [s.start_s for s in expected])


def test_meeting_with_its_rttm_one_row_per_turn(meetings, ray_address, short_model):
    out = "s3://real-speech/out-rttm"
    result = _label(meetings, "rttm", out, ray_address, short_model)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    emotions = read_table(out, "emotions")
    assert read_table(out, "errors").empty
    for name in MEETINGS:
        turns = read_rttm(str(FIXTURES / f"{name}.rttm"))
        rows = emotions[emotions["conversation_id"] == name].sort_values("utterance_index")
        pieces = [int(np.ceil((t.end_s - t.start_s) / MAX_SEGMENT_S)) for t in turns]
        assert len(rows) == sum(pieces)
        got = list(zip(rows["speaker"], rows["start_s"], rows["end_s"], strict=True))
        at = 0
        for turn, n in zip(turns, pieces, strict=True):
            mine = got[at : at + n]
            at += n
            assert {speaker for speaker, _, _ in mine} == {turn.speaker}
            assert mine[0][1] == pytest.approx(turn.start_s)
            assert mine[-1][2] == pytest.approx(min(turn.end_s, 30.0), abs=1e-3)
    dev00 = emotions[emotions["conversation_id"] == "dev00"]
    assert sorted(set(dev00["speaker"])) == ["MEE009", "MEE012"]
    assert len(dev00) == 10  # 9 reference turns, the 11.87 s one in two pieces


def test_one_impossible_utterance_among_twenty(meetings, ray_address, short_model):
    out = "s3://real-speech/out-timed"
    result = _label(meetings, "timed", out, ray_address, short_model)
    assert result.returncode == 3, result.stdout + result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith("dpm label: exit 3 (partial)")
    emotions, errors = read_table(out, "emotions"), read_table(out, "errors")
    assert len(emotions) == 20 and 13 not in set(emotions["utterance_index"])
    assert len(errors) == 1
    error = errors.iloc[0]
    assert (error["utterance_index"], error["error_type"]) == (13, "SegmentError")
    assert "outside the recording" in error["message"]


def _run_id(fs, path: str) -> str:
    (run,) = [name.rsplit("/", 1)[-1] for name in fs.ls(f"{path}/_runs")]
    return run
