import numpy as np
import pyarrow.parquet as pq
import pytest

from dpm_worker.errors import ConfigError
from dpm_worker.tables import (
    EMOTIONS,
    ERRORS,
    ErrorRecord,
    RunInfo,
    RunTables,
    conversation_key,
    decode_metadata,
    read_run_table,
)
from dpm_worker.utterance import LabeledUtterance, Utterance
from pipelines.label import JOURNAL, compact_run

LABELS = ("neutral", "happy", "sad", "angry")


def make_run(tmp_path, run_id="r1", conversations=7):
    run = RunInfo(run_id, "2026-11-26", LABELS, "dpm", "m", "fp", "v", {"k": 1})
    tables = RunTables(str(tmp_path), run)
    tables.write_record(
        "run.json",
        {
            "run_date": run.run_date,
            "labels": list(LABELS),
            "mode": "dpm",
            "model_fingerprint": "fp",
        },
    )
    for c in range(conversations):
        probs = np.array([0.2, 0.2, 0.4, 0.2], dtype=np.float32)
        utts = [
            LabeledUtterance(Utterance(f"conv{c}", i, "A", i, i + 1.0), "sad", 0.4, probs)
            for i in range(3)
        ]
        tables.write_emotions(f"conv{c}", utts)
    tables.write_errors("bad", [ErrorRecord("bad", 0, "AudioError", "empty", "x")])
    return tables


def test_compaction_keeps_rows_and_resume_keys(tmp_path):
    tables = make_run(tmp_path)
    other = make_run(tmp_path, run_id="r2", conversations=2)
    before = read_run_table(str(tmp_path), EMOTIONS).num_rows
    keys = tables.committed_keys()
    summary = compact_run(str(tmp_path), "r1", target_rows=10)
    assert summary[EMOTIONS] == {"inputs": 7, "outputs": 3, "rows": 21}
    assert summary[ERRORS]["inputs"] == 1
    assert read_run_table(str(tmp_path), EMOTIONS).num_rows == before
    files = tables.run_files(EMOTIONS)
    assert len(files) == 3 and all("--compact-" in f for f in files)
    assert tables.committed_keys() == keys  # a resumed run still skips them
    assert conversation_key("conv3") in tables.committed_keys()
    assert len(other.run_files(EMOTIONS)) == 2  # other runs untouched
    meta = decode_metadata(pq.ParquetFile(files[0]).schema_arrow.metadata)
    assert meta["run_config"] == {"k": 1} and meta["labels"] == list(LABELS)
    # Compacting again merges only what is new.
    assert compact_run(str(tmp_path), "r1", 10)[EMOTIONS]["inputs"] == 0


def test_interrupted_compaction_is_undone(tmp_path):
    tables = make_run(tmp_path, conversations=3)
    out = tables.partition_uri(EMOTIONS) + "/r1--compact-00000.parquet"
    with open(out, "wb") as fh:
        fh.write(b"partial")
    inputs = tables.run_files(EMOTIONS)[:3]
    tables.write_record(
        JOURNAL,
        {
            "conversation_keys": [],
            "emotion_conversations": 0,
            "error_conversations": 0,
            "next_seq": 1,
            "pending": {"status": "planned", "kind": EMOTIONS, "inputs": inputs, "outputs": [out]},
        },
    )
    compact_run(str(tmp_path), "r1", 100)
    assert read_run_table(str(tmp_path), EMOTIONS).num_rows == 9
    assert tables.read_record(JOURNAL)["pending"] is None


def test_unknown_run_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no run"):
        compact_run(str(tmp_path), "nope", 10)
