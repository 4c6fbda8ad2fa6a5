"""``dpm bench diarization`` and ``dpm diarize`` on tiny inputs: the AMI excerpts, one tiny
synthetic conversation, and a two-"actor" RAVDESS-layout tree cut from an AMI excerpt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from dpm_worker.corpus import parse_rttm, read_rttm
from pipelines.cli import main

FIXTURES = Path(__file__).parents[2] / "fixtures" / "real_speech"


@pytest.fixture(scope="module")
def actors(tmp_path_factory) -> Path:
    """Actor_19 (MEE009) and Actor_20 (MEE012): dev00's reference turns as RAVDESS clips."""
    root = tmp_path_factory.mktemp("ravdess")
    samples, sr = sf.read(FIXTURES / "dev00.flac", dtype="float32")
    emotions = ["01", "03", "04", "05"]
    counts = {"MEE009": 0, "MEE012": 0}
    for turn in read_rttm(str(FIXTURES / "dev00.rttm")):
        if turn.end_s - turn.start_s < 1.0:
            continue
        actor = 19 if turn.speaker == "MEE009" else 20
        n = counts[turn.speaker]
        counts[turn.speaker] += 1
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(exist_ok=True)
        cut = samples[round(turn.start_s * sr) : round(min(turn.end_s, turn.start_s + 3.0) * sr)]
        name = f"03-01-{emotions[n % 4]}-01-01-{n // 4 + 1:02d}-{actor:02d}.wav"
        sf.write(folder / name, cut, sr)
    return root


def test_bench_diarization_smoke(actors, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(
        ["bench", "diarization", "--ravdess", str(actors), "--actors", "19-20", "--turns", "4",
         "--ami", str(FIXTURES), "--synth", "1", "--synth-utterances", "4", "--emotion",
         "--slots", "2", "--out", str(tmp_path / "work"), "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["sets"]) == {"ravdess", "ami", "synth"}
    assert set(report["sets"]["ravdess"]) == {"all", "same"} or set(report["sets"]["ravdess"]) == {
        "all",
        "mixed",
    }
    for groups in report["sets"].values():
        for block in groups.values():
            assert 0.0 <= block["der"]["der"] <= 2.0 and block["n"] >= 1
    for rec in report["recordings"]:  # own DER and pyannote's (when installed) agree
        assert rec["der_own"]["der"] == pytest.approx(rec["der"]["der"], abs=1e-3)
        assert (tmp_path / "work" / "hyp" / f"{rec['id']}.rttm").exists()
    assert report["speed"]["x_realtime"] > 0
    emotion = report["emotion"]
    assert set(emotion["ua"]) == {"diarized", "gold", "unknown"}
    assert all(0.0 <= ua <= 1.0 for ua in emotion["ua"].values())
    assert emotion["time"]["label_s_with"] > 0 and "added" in emotion["time"]


def test_dpm_diarize_writes_rttm_to_feed_back(tmp_path, capsys):
    folder = tmp_path / "calls"
    (folder / "day1").mkdir(parents=True)
    shutil.copy(FIXTURES / "dev00.flac", folder / "day1" / "dev00.flac")
    assert main(["diarize", "--input", str(folder), "--out", str(tmp_path / "rttm")]) == 0
    written = tmp_path / "rttm" / "day1" / "dev00.rttm"
    turns = parse_rttm(written.read_text())
    assert {t.speaker for t in turns} == {"spk0", "spk1"} and turns[0].file_id == "dev00"
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["speakers"] == 2 and summary["rttm"] == str(written)
    manifest = tmp_path / "m.parquet"
    rows = [{"conversation_id": "c", "utterance_index": 0, "speaker": "unknown",
             "audio_uri": str(folder / "day1" / "dev00.flac")}]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    assert main(["diarize", "--input", str(manifest), "--out", str(tmp_path / "m")]) == 0
    assert parse_rttm((tmp_path / "m" / "dev00.rttm").read_text()) == turns


def test_built_conversations_alternate_two_actors(actors):
    from pipelines.bench.diarization_corpus import (
        ClipCache,
        build_conversations,
        ravdess_speakers,
    )
    from pipelines.bench.diarization_emotion import KINDS

    speakers = ravdess_speakers(str(actors), range(19, 21))
    assert [(s.name, s.gender) for s in speakers] == [("ravdess_19", "m"), ("ravdess_20", "f")]
    (conv,) = build_conversations("ravdess", speakers, ClipCache(), turns=8, seed=1)
    assert conv.pair == "mixed" and len(conv.turns) == len(conv.emotions) == 8
    assert {t.speaker for t in conv.turns} == {"ravdess_19", "ravdess_20"}
    assert set(conv.emotions) <= {"neutral", "happy", "sad", "angry"}
    assert conv.turns[-1].end_s < conv.duration_s and abs(conv.samples).max() <= 1.0
    assert KINDS == ("diarized", "gold", "unknown")


def test_single_conversations_hold_one_actor(actors):
    """``--single``: each actor alone, turns not overlapping, moods changing (the tuning set's
    one-speaker case)."""
    from pipelines.bench.diarization_corpus import (
        ClipCache,
        build_single_conversations,
        ravdess_speakers,
    )

    speakers = ravdess_speakers(str(actors), range(19, 21))
    convs = list(build_single_conversations("ravdess", speakers, ClipCache(), turns=6, seed=1))
    assert [c.conversation_id for c in convs] == [
        "ravdess_19__ravdess_19",
        "ravdess_20__ravdess_20",
    ]
    for conv, speaker in zip(convs, speakers, strict=True):
        assert conv.pair == "single" and {t.speaker for t in conv.turns} == {speaker.name}
        assert all(a.end_s <= b.start_s for a, b in zip(conv.turns, conv.turns[1:], strict=False))
