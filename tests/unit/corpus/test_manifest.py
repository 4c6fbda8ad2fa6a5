"""The canonical manifest: reading Parquet/JSONL/CSV, validation naming row and column,
per-conversation problems, and bounded-memory streaming by conversation."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpm_worker.corpus import (
    MANIFEST_SCHEMA,
    ManifestSource,
    UnknownLabelError,
    cast_manifest,
    check_columns,
    conversation_problems,
    count_manifest_rows,
    iter_conversations,
    manifest_fingerprint,
    read_manifest,
    to_rows,
    validate_manifest,
    write_manifest,
)
from dpm_worker.errors import BadInputError, LabelError, ManifestError

LABELS = ["neutral", "happy", "sad", "angry"]


def _rows(**overrides: list) -> dict[str, list]:
    """Four valid rows in two conversations, stored out of dialogue order on purpose."""
    columns: dict[str, list] = {
        "conversation_id": ["c2", "c1", "c1", "c2"],
        "utterance_index": [1, 1, 0, 0],
        "speaker": ["A", "B", "A", "B"],
        "audio_uri": ["audio/c2.wav", "audio/c1.wav", "audio/c1.wav", "/data/c2.wav"],
        "start_s": [2.0, 1.5, 0.0, 0.0],
        "end_s": [3.0, 2.5, 1.0, 1.5],
        "emotion": ["happy", "sad", "neutral", "angry"],
        "expressive": [True, False, True, False],
    }
    columns.update(overrides)
    return columns


def _write(tmp_path, fmt: str, columns: dict[str, list], name: str = "manifest") -> str:
    table = pa.table(columns)
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "csv":
        import pyarrow.csv as pa_csv

        pa_csv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    return str(path)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_read_manifest_formats_give_same_table(tmp_path, fmt):
    uri = _write(tmp_path, fmt, _rows())
    table = read_manifest(uri, labels=LABELS)
    assert table.schema.names[: len(MANIFEST_SCHEMA)] == MANIFEST_SCHEMA.names
    for field in MANIFEST_SCHEMA:
        assert table.schema.field(field.name).type == field.type
    assert table.column_names[-1] == "expressive"
    assert list(
        zip(table["conversation_id"].to_pylist(), table["utterance_index"].to_pylist(), strict=True)
    ) == [
        ("c1", 0),
        ("c1", 1),
        ("c2", 0),
        ("c2", 1),
    ]
    # Relative audio paths resolve against the manifest's folder; absolute ones are kept.
    assert table["audio_uri"].to_pylist() == [
        os.path.join(str(tmp_path), "audio/c1.wav"),
        os.path.join(str(tmp_path), "audio/c1.wav"),
        "/data/c2.wav",
        os.path.join(str(tmp_path), "audio/c2.wav"),
    ]
    assert table["emotion"].to_pylist() == ["neutral", "sad", "angry", "happy"]


def test_folder_uri_reads_manifest_parquet(tmp_path):
    _write(tmp_path, "parquet", _rows())
    assert read_manifest(str(tmp_path)).num_rows == 4


def test_csv_keeps_identifier_strings_and_optional_columns_may_be_absent(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("conversation_id,utterance_index,speaker,audio_uri\n007,0,01,a.wav\n")
    table = read_manifest(str(path))
    assert table["conversation_id"].to_pylist() == ["007"]
    assert table["speaker"].to_pylist() == ["01"]
    assert table["start_s"].to_pylist() == [None]
    assert table["emotion"].to_pylist() == [None]


def test_write_manifest_round_trips(tmp_path):
    table = read_manifest(_write(tmp_path, "parquet", _rows()))
    for ext in ("parquet", "jsonl", "csv"):
        out = write_manifest(table, str(tmp_path / "out" / f"m.{ext}"))
        again = read_manifest(out)
        assert again.select(MANIFEST_SCHEMA.names).equals(table.select(MANIFEST_SCHEMA.names))


def _raises(tmp_path, columns, match, *, error=ManifestError, row=None, column=None, labels=None):
    uri = _write(tmp_path, "parquet", columns)
    with pytest.raises(error, match=match) as info:
        read_manifest(uri, labels=labels)
    assert info.value.uri == uri
    assert uri in str(info.value)
    if row is not None:
        assert info.value.row == row and f"row {row}" in str(info.value)
    if column is not None:
        assert info.value.column == column and repr(column) in str(info.value)
    return info.value


def test_missing_required_column_names_it(tmp_path):
    columns = _rows()
    del columns["speaker"]
    _raises(tmp_path, columns, "missing required column", column="speaker")


def test_null_in_required_column(tmp_path):
    _raises(
        tmp_path,
        _rows(speaker=["A", None, "A", "B"]),
        "speaker is null",
        row=1,
        column="speaker",
    )


def test_empty_conversation_id(tmp_path):
    _raises(
        tmp_path,
        _rows(conversation_id=["c2", "c1", " ", "c2"]),
        "conversation_id is empty",
        row=2,
        column="conversation_id",
    )


def test_duplicate_utterance_index_names_second_row(tmp_path):
    err = _raises(
        tmp_path,
        _rows(utterance_index=[1, 0, 0, 0]),
        "duplicate utterance_index 0 in conversation 'c1'",
        row=2,
        column="utterance_index",
    )
    assert "first at row 1" in str(err)


def test_reversed_times(tmp_path):
    _raises(
        tmp_path,
        _rows(start_s=[2.0, 1.5, 0.0, 2.0], end_s=[3.0, 2.5, 1.0, 1.5]),
        "end_s 1.5 is not after start_s 2.0",
        row=3,
        column="end_s",
    )


def test_negative_time(tmp_path):
    _raises(
        tmp_path,
        _rows(start_s=[2.0, -0.5, 0.0, 0.0]),
        "start_s -0.5 is negative",
        row=1,
        column="start_s",
    )


def test_nan_time(tmp_path):
    _raises(
        tmp_path,
        _rows(end_s=[3.0, 2.5, float("nan"), 1.5]),
        "not a finite number",
        row=2,
        column="end_s",
    )


def test_start_without_end(tmp_path):
    _raises(
        tmp_path,
        _rows(end_s=[3.0, 2.5, 1.0, None]),
        "start_s 0.0 is given without end_s",
        row=3,
        column="end_s",
    )


def test_negative_utterance_index(tmp_path):
    _raises(
        tmp_path,
        _rows(utterance_index=[1, 1, 0, -1]),
        "is negative",
        row=3,
        column="utterance_index",
    )


def test_unknown_label_is_label_and_manifest_error(tmp_path):
    err = _raises(
        tmp_path,
        _rows(emotion=["happy", "joy", None, "angry"]),
        "unknown emotion label 'joy'",
        error=UnknownLabelError,
        row=1,
        column="emotion",
        labels=LABELS,
    )
    assert isinstance(err, LabelError) and isinstance(err, BadInputError)
    # Without a label set, any label is accepted.
    assert read_manifest(err.uri).num_rows == 4


def test_uncastable_value_names_row_and_column(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "conversation_id,utterance_index,speaker,audio_uri\nc,0,A,a.wav\nc,one,A,a.wav\n"
    )
    with pytest.raises(ManifestError, match="'one' cannot be read as int32") as info:
        read_manifest(str(path))
    assert (info.value.row, info.value.column) == (1, "utterance_index")


def test_first_problem_by_row_is_reported(tmp_path):
    columns = _rows(speaker=["A", "B", "A", None], start_s=[2.0, -1.0, 0.0, 0.0])
    _raises(tmp_path, columns, "start_s -1.0 is negative", row=1, column="start_s")


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing.parquet", None, "manifest not found"),
        ("empty.parquet", b"", "manifest file is empty"),
        ("garbage.parquet", b"not a parquet file at all", "cannot read manifest"),
        ("array.json", b'[{"conversation_id": "c"}]', "JSON Lines"),
        ("broken.jsonl", b'{"conversation_id": "c", \n', "row 0: line 1: invalid JSON"),
        ("list.jsonl", b'\n{"a": 1}\n[1, 2]\n', "line 3: expected a JSON object, got list"),
        ("m.txt", b"x", "unsupported manifest extension"),
        ("empty.csv", b"", "manifest file is empty"),
    ],
)
def test_unreadable_manifest_raises_manifest_error(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ManifestError, match=match) as info:
        read_manifest(str(path))
    assert str(path) in str(info.value)


def test_check_columns_is_fail_fast_and_separate():
    check_columns(MANIFEST_SCHEMA, "m.parquet")
    with pytest.raises(ManifestError, match="audio_uri"):
        check_columns(pa.schema([("conversation_id", pa.string())] * 1), "m.parquet")


def test_conversation_problems_lists_every_problem_with_utterance_index():
    table = cast_manifest(
        pa.table(
            {
                "conversation_id": ["c", "c", "c"],
                "utterance_index": [0, 1, 1],
                "speaker": ["A", "B", "A"],
                "audio_uri": ["a.wav"] * 3,
                "start_s": [0.0, 3.0, 4.0],
                "end_s": [1.0, 2.0, 5.0],
                "emotion": ["happy", "bored", "sad"],
            }
        ),
        "m.parquet",
    )
    problems = conversation_problems(to_rows(table), labels=LABELS)
    assert (
        1,
        "column 'end_s': end_s 2.0 is not after start_s 3.0 (reversed or empty segment)",
    ) in (problems)
    assert any(i == 1 and "'emotion'" in m and "bored" in m for i, m in problems)
    assert any(i == 1 and "duplicate utterance_index 1" in m for i, m in problems)
    assert all(i != 0 for i, _ in problems)
    valid = [r for r in to_rows(table) if r.start_s != 3.0 and r.emotion != "bored"]
    assert conversation_problems(valid, labels=LABELS) == []


def test_validate_manifest_accepts_valid_table_and_returns_schema():
    table = validate_manifest(pa.table(_rows()), "mem://m", labels=LABELS)
    assert table.schema.field("utterance_index").type == pa.int32()


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
def test_iter_conversations_handles_interleaved_rows(tmp_path, fmt):
    # Conversations interleave across batch boundaries; each must come out whole and ordered.
    n = 30
    columns = {
        "conversation_id": [f"c{i % 3}" for i in range(n)],
        "utterance_index": [n - i for i in range(n)],
        "speaker": ["A"] * n,
        "audio_uri": ["rec.wav"] * n,
        "note": [str(i) for i in range(n)],
    }
    uri = _write(tmp_path, fmt, columns)
    seen = dict(iter_conversations(uri, batch_rows=4))
    assert sorted(seen) == ["c0", "c1", "c2"]
    for rows in seen.values():
        indices = [r.utterance_index for r in rows]
        assert indices == sorted(indices) and len(indices) == 10
        assert all(r.audio_uri == os.path.join(str(tmp_path), "rec.wav") for r in rows)
        assert all("note" in r.extra for r in rows)


def test_iter_conversations_emits_contiguous_conversations_early(tmp_path):
    # With contiguous conversations the first is yielded before the scan reaches the last row.
    n = 40
    columns = {
        "conversation_id": [f"c{i // 10}" for i in range(n)],
        "utterance_index": [i % 10 for i in range(n)],
        "speaker": ["A"] * n,
        "audio_uri": ["rec.wav"] * n,
    }
    uri = _write(tmp_path, "parquet", columns)
    stream = iter_conversations(uri, batch_rows=5)
    first_id, first_rows = next(stream)
    assert first_id == "c0" and [r.utterance_index for r in first_rows] == list(range(10))
    assert [cid for cid, _ in stream] == ["c1", "c2", "c3"]


def test_iter_conversations_leaves_row_problems_to_the_caller(tmp_path):
    uri = _write(tmp_path, "parquet", _rows(utterance_index=[1, 0, 0, 0]))
    by_id = dict(iter_conversations(uri))
    assert conversation_problems(by_id["c2"]) == []
    assert conversation_problems(by_id["c1"])[0][0] == 0


def test_iter_conversations_fails_fast_on_missing_column(tmp_path):
    columns = _rows()
    del columns["audio_uri"]
    uri = _write(tmp_path, "parquet", columns)
    with pytest.raises(ManifestError, match="audio_uri"):
        next(iter_conversations(uri))


def test_fingerprint_changes_with_content(tmp_path):
    a = manifest_fingerprint(_write(tmp_path, "parquet", _rows(), name="a"))
    b = manifest_fingerprint(_write(tmp_path, "parquet", _rows(speaker=["Z"] * 4), name="b"))
    assert a != b and len(a) == 64
    assert a == manifest_fingerprint(str(tmp_path / "a.parquet"))


def test_conversation_problems_match_vectorized_row_problems():
    # The per-conversation checks are plain Python for speed; they must say exactly what the
    # table checks say, in the same order.
    table = cast_manifest(
        pa.table(
            {
                "conversation_id": ["c", "c", " ", "c", "c", "c", "c"],
                "utterance_index": [0, 1, 2, 2, -1, 5, 6],
                "speaker": ["A", None, "A", "", "B", "A", "B"],
                "audio_uri": ["a.wav"] * 7,
                "start_s": [0.0, float("nan"), 2.0, None, -1.0, 5.0, 6.0],
                "end_s": [1.0, 2.0, None, 3.0, -0.5, float("inf"), 6.0],
                "channel": pa.array([0, -1, 0, 1, 0, 1, None], pa.int16()),
                "emotion": ["happy", "joy", None, "sad", "{odd}", "angry", "neutral"],
                "rttm_uri": ["a.rttm", None, " ", None, None, None, None],
            }
        ),
        "m.parquet",
    )
    from dpm_worker.corpus import row_problems

    vectorized = row_problems(table, LABELS + ["{x}"])
    rows = to_rows(table)
    expected = [
        (rows[p.row].utterance_index, f"column {p.column!r}: {p.message}") for p in vectorized
    ]
    assert conversation_problems(rows, LABELS + ["{x}"]) == expected
    assert len(expected) >= 14


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_text_formats_survive_columns_that_start_empty(tmp_path, fmt):
    # pyarrow fixes a column's type from the first block (~1 MB); a column that is empty there
    # and filled later (gold labels, times) must still read, in both reading paths.
    n = 60_000 if fmt == "csv" else 12_000
    columns = {
        "conversation_id": [f"c{i // 10:05d}" for i in range(n)],
        "utterance_index": [i % 10 for i in range(n)],
        "speaker": ["A"] * n,
        "audio_uri": ["rec.wav"] * n,
        "start_s": [None] * (n - 10) + [float(i) for i in range(10)],
        "end_s": [None] * (n - 10) + [i + 0.5 for i in range(10)],
        "emotion": [None] * (n - 10) + ["happy"] * 10,
    }
    uri = _write(tmp_path, fmt, columns)
    if fmt == "csv":
        assert os.path.getsize(uri) > 1_500_000  # several CSV blocks
        table = read_manifest(uri, labels=LABELS)
    else:
        table = validate_manifest(ManifestSource(uri).read(batch_rows=5000), uri, LABELS)
    assert table["emotion"].to_pylist()[-10:] == ["happy"] * 10
    assert table["end_s"].to_pylist()[-1] == 9.5
    assert sum(len(rows) for _, rows in iter_conversations(uri, batch_rows=5000)) == n
    assert count_manifest_rows(uri) == n


def test_jsonl_mixed_types_name_the_row(tmp_path):
    path = tmp_path / "m.jsonl"
    good = {"conversation_id": "c", "speaker": "A", "audio_uri": "a.wav"}
    lines = [
        json.dumps({**good, "utterance_index": 0}),
        json.dumps({**good, "utterance_index": "1"}),
        "",
        json.dumps({**good, "utterance_index": "two"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match="'two' cannot be read as int32") as info:
        read_manifest(str(path))
    assert (info.value.row, info.value.column) == (2, "utterance_index")
    path.write_text("\n".join(lines[:2]) + "\n")
    assert read_manifest(str(path))["utterance_index"].to_pylist() == [0, 1]


def test_count_manifest_rows_parquet(tmp_path):
    assert count_manifest_rows(_write(tmp_path, "parquet", _rows())) == 4


def test_rttm_uri_on_a_row_with_times_is_rejected(tmp_path):
    _raises(
        tmp_path,
        _rows(rttm_uri=[None, "c1.rttm", None, None]),
        "rttm_uri 'c1.rttm' is given on a row with times",
        row=1,
        column="rttm_uri",
    )


def test_rttm_uri_resolves_against_the_manifest_folder(tmp_path):
    columns = {
        "conversation_id": ["m1"],
        "utterance_index": [0],
        "speaker": ["unknown"],
        "audio_uri": ["audio/m1.flac"],
        "rttm_uri": ["rttm/m1.rttm"],
    }
    table = read_manifest(_write(tmp_path, "csv", columns))
    assert table["rttm_uri"].to_pylist() == [str(tmp_path / "rttm" / "m1.rttm")]
    assert table["audio_uri"].to_pylist() == [str(tmp_path / "audio" / "m1.flac")]
