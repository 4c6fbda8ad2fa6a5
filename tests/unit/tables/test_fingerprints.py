"""Incremental labeling: conversation fingerprints, the run records that keep them, selection."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from dpm_worker.corpus import UtteranceRow
from dpm_worker.tables import (
    FINGERPRINTS_NAME,
    KEY_RECORD,
    SUCCESS_NAME,
    FingerprintKey,
    PreviousFingerprints,
    RunInfo,
    RunTables,
    conversation_fingerprint,
    fingerprint_conversations,
    labeling_hash,
    load_previous,
    recording_identity,
    write_fingerprints,
)

KEY = FingerprintKey(model_fingerprint="model-a", labeling_hash="cfg-1")


def rows(conversation_id: str, audio: str, n: int = 3, text: str = "hi") -> list[UtteranceRow]:
    return [
        UtteranceRow(conversation_id, i, f"S{i % 2}", audio, float(i), i + 0.5, i % 2, text)
        for i in range(n)
    ]


def committed_run(out: str, run_id: str, fingerprints: dict, finished_at: str, key=KEY) -> None:
    tables = RunTables(
        out, RunInfo(run_id, "2026-11-26", ("neutral", "happy"), "dpm", "m", "f", "v")
    )
    write_fingerprints(tables, fingerprints, key)
    tables.write_record(SUCCESS_NAME, {"finished_at": finished_at, KEY_RECORD: key.to_dict()})


def test_labeling_hash_ignores_key_order_and_sees_every_value():
    assert labeling_hash({"mode": "dpm", "lr": 1e-3}) == labeling_hash({"lr": 1e-3, "mode": "dpm"})
    assert labeling_hash({"mode": "dpm", "lr": 1e-3}) != labeling_hash({"mode": "dpm", "lr": 2e-3})


def test_recording_identity_prefers_the_etag_then_mtime():
    s3 = {"size": 10, "ETag": '"abc"', "LastModified": "2026-11-26"}
    assert recording_identity(s3) == recording_identity({**s3, "LastModified": "2026-11-27"})
    assert recording_identity(s3) != recording_identity({**s3, "ETag": '"abd"'})
    local = {"size": 10, "mtime": 1.0}
    assert recording_identity(local) != recording_identity({**local, "mtime": 2.0})
    assert recording_identity(local) != recording_identity({**local, "size": 11})
    assert recording_identity(None) == "missing"


def test_conversation_fingerprint_covers_rows_and_recordings_not_row_order():
    base = rows("c1", "/a.flac")
    ids = {"/a.flac": "size=1;version=1"}
    fp = conversation_fingerprint(base, ids)
    assert conversation_fingerprint(list(reversed(base)), ids) == fp
    assert conversation_fingerprint(base, {"/a.flac": "size=1;version=2"}) != fp
    assert conversation_fingerprint(rows("c1", "/a.flac", text="ho"), ids) != fp
    assert conversation_fingerprint(rows("c1", "/a.flac", n=4), ids) != fp
    gold = [dataclasses.replace(base[0], emotion="happy"), *base[1:]]
    assert conversation_fingerprint(gold, ids) != fp
    # Extra (non-canonical) manifest columns do not change the labels, so not the fingerprint.
    extra = [dataclasses.replace(r, extra={"note": "x"}) for r in base]
    assert conversation_fingerprint(extra, ids) == fp


def test_fingerprint_stream_sees_a_touched_recording_and_keeps_order(tmp_path):
    audio = {name: tmp_path / f"{name}.flac" for name in ("a", "b", "c")}
    for path in audio.values():
        path.write_bytes(b"x" * 100)
    stream = [(n, rows(n, str(p))) for n, p in audio.items()]
    first = list(fingerprint_conversations(iter(stream), chunk=2))
    assert [c for c, _, _ in first] == ["a", "b", "c"]
    assert [r for _, r, _ in first] == [r for _, r in stream]
    stat = os.stat(audio["b"])
    os.utime(audio["b"], (stat.st_atime, stat.st_mtime + 10))
    audio["c"].unlink()
    second = list(fingerprint_conversations(iter(stream), chunk=2))
    changed = [a[0] for a, b in zip(first, second, strict=True) if a[2] != b[2]]
    assert changed == ["b", "c"]


def test_load_previous_merges_committed_runs_with_the_same_key_latest_wins(tmp_path):
    out = str(tmp_path / "out")
    committed_run(out, "r1", {"c1": "f1", "c2": "f2"}, "2026-11-24T00:00:00+00:00")
    committed_run(out, "r2", {"c2": "f2b", "c3": "f3"}, "2026-11-25T00:00:00+00:00")
    other = FingerprintKey(model_fingerprint="model-b", labeling_hash="cfg-1")
    committed_run(out, "r3", {"c1": "zz"}, "2026-11-26T00:00:00+00:00", key=other)
    # Fingerprints without _SUCCESS: an unfinished run never counts.
    unfinished = RunTables(out, RunInfo("r4", "2026-11-26", ("neutral",), "dpm", "m", "f", "v"))
    write_fingerprints(unfinished, {"c1": "nope"}, KEY)
    assert (tmp_path / "out" / "_runs" / "r4" / FINGERPRINTS_NAME).exists()

    previous = load_previous(out, KEY)
    assert previous.runs == ["r1", "r2"]
    assert previous.fingerprints == {"c1": "f1", "c2": "f2b", "c3": "f3"}
    assert load_previous(out, KEY, exclude_run_id="r2").fingerprints == {"c1": "f1", "c2": "f2"}
    assert load_previous(out, other).fingerprints == {"c1": "zz"}
    assert load_previous(str(tmp_path / "empty"), KEY).runs == []
    record = json.loads((tmp_path / "out" / "_runs" / "r2" / SUCCESS_NAME).read_text())
    assert record[KEY_RECORD] == KEY.to_dict()


@pytest.fixture()
def job(tmp_path):
    from pipelines.label import LabelJob, LabelJobConfig

    def make(conversations, committed=(), previous=None):
        config = LabelJobConfig(input="in.parquet", output=str(tmp_path / "out"))
        run = RunInfo("now", "2026-11-26", ("neutral",), "dpm", "m", "model-a", "v")
        tables = RunTables(config.output, run)
        return LabelJob(
            config, run, tables, iter(conversations), set(committed), None, previous=previous
        )

    return make


def test_incremental_selection_schedules_new_and_changed_only(job):
    from dpm_worker.tables import conversation_key
    from pipelines.label import Progress

    stream = [
        ("same", rows("same", "/a"), "f-same"),
        ("changed", rows("changed", "/b"), "f-new"),
        ("new", rows("new", "/c"), "f-c"),
        ("resumed", rows("resumed", "/d"), "f-d"),
    ]
    previous = PreviousFingerprints({"same": "f-same", "changed": "f-old"}, ["r1"])
    labeling = job(stream, committed={conversation_key("resumed")}, previous=previous)
    progress = Progress()
    scheduled = [c for c, _ in labeling._uncommitted(progress)]
    assert scheduled == ["changed", "new"]
    assert (progress.unchanged, progress.skipped, progress.rows_skipped) == (1, 1, 6)
    # What this run may commit: the scheduled ones and the one an earlier attempt committed.
    assert labeling.fingerprints == {"changed": "f-new", "new": "f-c", "resumed": "f-d"}
    assert "1 unchanged" in progress.line()

    full = job(stream)  # not incremental: every uncommitted conversation
    assert [c for c, _ in full._uncommitted(Progress())] == ["same", "changed", "new", "resumed"]
