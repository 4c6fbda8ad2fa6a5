import datetime as dt
import json
import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpm_worker.errors import ConfigError, StorageError
from dpm_worker.tables import (
    EMOTIONS,
    ERRORS,
    ErrorRecord,
    RunInfo,
    RunTables,
    check_writable,
    conversation_file_name,
    conversation_key,
    decode_metadata,
    emotion_schema,
    new_run_id,
    read_run_table,
    validate_run_id,
)
from dpm_worker.utterance import LabeledUtterance, Utterance

LABELS = ("neutral", "happy", "sad", "angry")


def make_run(run_id="run-1", **config):
    return RunInfo(
        run_id=run_id,
        run_date="2026-11-26",
        labels=LABELS,
        mode="dpm",
        model_id="tiny",
        model_fingerprint="abc123",
        code_version="0.1.0+test",
        config=config or {"input": "in.parquet"},
    )


def utterances(n=3):
    return [
        LabeledUtterance(
            Utterance(
                "c",
                i,
                "A" if i % 2 == 0 else "B",
                start_s=i * 2.0,
                end_s=i * 2.0 + 1.5,
                emotion=LABELS[(i + 1) % 4] if i else None,
            ),
            LABELS[i % 4],
            0.7,
            np.array([0.7, 0.1, 0.1, 0.1], dtype=np.float32),
        )
        for i in range(n)
    ]


def test_schema_has_contract_columns_and_types():
    schema = emotion_schema(LABELS)
    assert schema.names == [
        "run_id",
        "conversation_id",
        "utterance_index",
        "speaker",
        "start_s",
        "end_s",
        "emotion",
        "confidence",
        "p_neutral",
        "p_happy",
        "p_sad",
        "p_angry",
        "gold_emotion",
        "chunks",
        "truncated",
        "mode",
        "model_id",
        "labeled_at",
    ]
    assert pa.types.is_dictionary(schema.field("emotion").type)
    assert schema.field("confidence").type == pa.float32()
    assert schema.field("p_sad").type == pa.float32()
    assert schema.field("labeled_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("gold_emotion").nullable


def test_labels_colliding_as_columns_are_rejected():
    with pytest.raises(ConfigError, match="duplicate"):
        emotion_schema(["a-b", "a_b"])


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "..", "a..b", "-x", "x" * 200, "a b"])
def test_unsafe_run_ids_are_rejected(bad):
    with pytest.raises(ConfigError):
        validate_run_id(bad)


def test_new_run_id_is_valid_and_unique():
    a, b = new_run_id(), new_run_id()
    assert validate_run_id(a) == a and a != b


def test_file_name_is_deterministic_and_cannot_escape():
    name = conversation_file_name("r1", "../../etc/passwd")
    assert name == conversation_file_name("r1", "../../etc/passwd")
    assert "/" not in name and ".." not in name
    assert name.startswith("r1--") and name.endswith(".parquet")
    assert conversation_key("a") != conversation_key("b")


def test_write_read_roundtrip_with_metadata(tmp_path):
    run = make_run()
    tables = RunTables(str(tmp_path), run)
    when = dt.datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=dt.UTC)
    uri = tables.write_emotions("conv/../1", utterances(), labeled_at=when)
    assert uri.startswith(str(tmp_path / EMOTIONS / "run_date=2026-11-26"))
    assert os.path.dirname(uri) == str(tmp_path / EMOTIONS / "run_date=2026-11-26")
    pf = pq.ParquetFile(uri)
    meta = decode_metadata(pf.schema_arrow.metadata)
    assert meta["labels"] == list(LABELS)
    assert meta["model_fingerprint"] == "abc123"
    assert meta["code_version"] == "0.1.0+test"
    assert meta["run_config"] == {"input": "in.parquet"}
    table = read_run_table(str(tmp_path), EMOTIONS)
    assert table.num_rows == 3
    row = table.to_pylist()[1]
    assert row["conversation_id"] == "conv/../1"
    assert row["emotion"] == "happy"
    assert row["labeled_at"] == when
    assert str(row["run_date"]) == "2026-11-26"
    # Nothing but the committed file in the partition: the temporary file was renamed.
    assert os.listdir(os.path.dirname(uri)) == [os.path.basename(uri)]


def test_duckdb_and_pandas_read_the_hive_table(tmp_path):
    tables = RunTables(str(tmp_path), make_run())
    tables.write_emotions("c1", utterances(2))
    tables.write_emotions("c2", utterances(4))
    glob = str(tmp_path / EMOTIONS / "**" / "*.parquet")
    n, dates = duckdb.sql(
        f"select count(*), count(distinct run_date) from read_parquet('{glob}', "
        "hive_partitioning=true)"
    ).fetchall()[0]
    assert (n, dates) == (6, 1)
    frame = pq.read_table(str(tmp_path / EMOTIONS)).to_pandas()
    assert sorted(frame["conversation_id"].unique()) == ["c1", "c2"]


def test_retry_never_duplicates_nor_replaces_the_committed_file(tmp_path):
    tables = RunTables(str(tmp_path), make_run())
    uri = tables.write_emotions("c1", utterances(3), dt.datetime(2026, 11, 30, 12))
    with open(uri, "rb") as fh:
        committed = fh.read()
    # A late writer (a killed actor still writing) with other rows changes nothing.
    assert tables.write_emotions("c1", utterances(2), dt.datetime(2026, 11, 30, 11)) == uri
    with open(uri, "rb") as fh:
        assert fh.read() == committed
    assert read_run_table(str(tmp_path), EMOTIONS).num_rows == 3
    assert tables.committed_keys() == {conversation_key("c1")}
    assert not [n for n in os.listdir(os.path.dirname(uri)) if n.endswith(".tmp")]


def test_racing_exclusive_writers_one_wins_whole(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from dpm_worker.tables import write_bytes_atomic

    uri = str(tmp_path / "race.bin")
    payloads = [bytes([i]) * (1 << 20) for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        won = list(pool.map(lambda p: write_bytes_atomic(p, uri, exclusive=True), payloads))
    assert sum(won) == 1
    with open(uri, "rb") as fh:
        assert fh.read() == payloads[won.index(True)]


def test_committed_keys_cover_both_tables_and_only_this_run(tmp_path):
    tables = RunTables(str(tmp_path), make_run("run-a"))
    other = RunTables(str(tmp_path), make_run("run-b"))
    tables.write_emotions("ok", utterances(2))
    tables.write_errors("bad", [ErrorRecord("bad", 0, "AudioError", "empty", "x.flac")])
    other.write_emotions("elsewhere", utterances(1))
    assert tables.committed_keys() == {conversation_key("ok"), conversation_key("bad")}
    assert tables.count_rows(EMOTIONS) == 2 and tables.count_rows(ERRORS) == 1


def test_partial_errors_commit_only_with_their_emotions(tmp_path):
    tables = RunTables(str(tmp_path), make_run())
    error = ErrorRecord("mixed", 3, "SegmentError", "outside the recording", "x.flac")
    tables.write_errors("mixed", [error], partial=True)
    assert tables.committed_keys() == set()  # a crash here relabels the conversation
    tables.write_emotions("mixed", utterances(2))
    assert tables.committed_keys() == {conversation_key("mixed")}
    assert tables.count_rows(EMOTIONS) == 2 and tables.count_rows(ERRORS) == 1
    assert len(tables.run_files(ERRORS)) == 1


def test_error_messages_are_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    tables = RunTables(str(tmp_path), make_run())
    tables.write_errors("c", [ErrorRecord("c", None, "StorageError", "denied s3cr3t-value", None)])
    row = read_run_table(str(tmp_path), ERRORS).to_pylist()[0]
    assert "s3cr3t" not in row["message"] and row["utterance_index"] is None


def test_records_roundtrip(tmp_path):
    tables = RunTables(str(tmp_path), make_run())
    assert tables.read_record("_SUCCESS") is None
    tables.write_record("_SUCCESS", {"utterances": 3})
    assert tables.read_record("_SUCCESS") == {"utterances": 3}
    assert json.loads((tmp_path / "_runs" / "run-1" / "_SUCCESS").read_text())["utterances"] == 3


def test_records_and_footers_keep_what_was_given_when_a_credential_is_a_substring(
    tmp_path, monkeypatch
):
    # MinIO-style set-ups: the access key id is also part of the bucket name and the run id.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "acme")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "acme-secret")
    run = make_run("acme1", input="s3://acme/corpus/manifest.parquet")
    tables = RunTables(str(tmp_path), run)
    record = {"run_id": "acme1", "input": "s3://acme/corpus/manifest.parquet"}
    tables.write_record("run.json", record)
    assert tables.read_record("run.json") == record
    tables.write_emotions("c", utterances(1))
    meta = decode_metadata(pq.read_schema(tables.run_files(EMOTIONS)[0]).metadata)
    assert meta["run_id"] == "acme1"
    assert meta["run_config"]["input"] == "s3://acme/corpus/manifest.parquet"


def test_probability_count_must_match_labels(tmp_path):
    tables = RunTables(str(tmp_path), make_run())
    bad = [LabeledUtterance(Utterance("c", 0, "A"), "sad", 0.5, np.array([0.5, 0.5]))]
    with pytest.raises(ConfigError, match="probabilities"):
        tables.write_emotions("c", bad)


def test_unwritable_output_fails_fast(tmp_path):
    check_writable(str(tmp_path / "out"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="not writable"):
        check_writable(str(blocker / "out"))


def test_bad_run_date_is_rejected():
    with pytest.raises(ConfigError, match="run_date"):
        RunInfo("r", "26/11/2026", LABELS, "dpm", "m", "f", "v")
