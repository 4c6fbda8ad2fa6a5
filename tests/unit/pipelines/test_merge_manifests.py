"""``dpm merge``: tagged ids, absolute audio URIs, input order, schema union, typed errors."""

from __future__ import annotations

import argparse
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpm_worker.corpus import MANIFEST_SCHEMA
from dpm_worker.errors import BadInputError, ConfigError, ManifestError
from pipelines import cli
from pipelines.corpus import SOURCES_METADATA_KEY, merge_manifests, merged_schema, parse_inputs, run


def _write_folder_corpus(root) -> str:
    """A corpus folder: manifest.parquet with relative audio URIs and an ``expressive`` column,
    rows deliberately not sorted (conversation b before a)."""
    root.mkdir()
    table = pa.table(
        {
            "conversation_id": ["b", "b", "a"],
            "utterance_index": pa.array([1, 0, 0], pa.int32()),
            "speaker": ["b_A", "b_B", "a_A"],
            "audio_uri": ["audio/b.flac", "audio/b.flac", "audio/a.flac"],
            "start_s": [2.0, 0.0, 0.0],
            "end_s": [3.0, 1.5, 1.0],
            "emotion": ["sad", "happy", "neutral"],
            "expressive": pa.array([True, False, True], pa.bool_()),
        }
    )
    schema = table.schema.set(
        table.schema.get_field_index("expressive"), pa.field("expressive", pa.bool_(), False)
    )
    pq.write_table(table.cast(schema), root / "manifest.parquet")
    return str(root)


def _write_jsonl_corpus(path) -> str:
    """A JSON Lines manifest file: one absolute and one relative audio URI, no ``expressive``."""
    rows = [
        {"conversation_id": "a", "utterance_index": 0, "speaker": "a_A",
         "audio_uri": "/data/x/a.wav", "text": "hello"},
        {"conversation_id": "a", "utterance_index": 1, "speaker": "a_B",
         "audio_uri": "sub/a2.wav", "text": "there"},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _args(out, *inputs: str) -> argparse.Namespace:
    return argparse.Namespace(out=str(out), endpoint_url=None, inputs=list(inputs))


def test_merge_tags_ids_resolves_audio_and_keeps_input_order(tmp_path, capsys):
    folder = _write_folder_corpus(tmp_path / "c1")
    jsonl = _write_jsonl_corpus(tmp_path / "c2.jsonl")
    out = tmp_path / "out" / "merged.parquet"

    assert run(_args(out, f"x={folder}", f"y={jsonl}")) == 0

    table = pq.read_table(out)
    assert table.column("conversation_id").to_pylist() == ["x_b", "x_b", "x_a", "y_a", "y_a"]
    assert table.column("speaker").to_pylist() == ["x_b_A", "x_b_B", "x_a_A", "y_a_A", "y_a_B"]
    assert table.column("utterance_index").to_pylist() == [1, 0, 0, 0, 1]
    assert table.column("audio_uri").to_pylist() == [
        os.path.join(folder, "audio/b.flac"),
        os.path.join(folder, "audio/b.flac"),
        os.path.join(folder, "audio/a.flac"),
        "/data/x/a.wav",
        os.path.join(str(tmp_path), "sub/a2.wav"),
    ]
    # Other columns untouched; absent ones are nulls.
    assert table.column("start_s").to_pylist() == [2.0, 0.0, 0.0, None, None]
    assert table.column("emotion").to_pylist() == ["sad", "happy", "neutral", None, None]
    assert table.column("text").to_pylist() == [None, None, None, "hello", "there"]
    assert table.column("expressive").to_pylist() == [True, False, True, None, None]
    # Canonical schema first, then the extra column, nullable because one input lacks it.
    assert table.schema.names == MANIFEST_SCHEMA.names + ["expressive"]
    for field in MANIFEST_SCHEMA:
        assert table.schema.field(field.name).equals(field)
    assert table.schema.field("expressive").type == pa.bool_()
    assert table.schema.field("expressive").nullable
    sources = json.loads(table.schema.metadata[SOURCES_METADATA_KEY])
    assert sources == {"x": os.path.join(folder, "manifest.parquet"), "y": jsonl}

    summary = capsys.readouterr().out.strip().splitlines()
    assert summary == [
        f"merged 5 rows into {out} (x: 3 rows / 2 conversations, y: 2 rows / 1 conversations)"
    ]


def test_extra_column_present_everywhere_stays_non_nullable(tmp_path):
    first = _write_folder_corpus(tmp_path / "c1")
    second = _write_folder_corpus(tmp_path / "c2")
    table, counts = merge_manifests([("p", first), ("q", second)])
    assert not table.schema.field("expressive").nullable
    assert table.column("expressive").to_pylist() == [True, False, True] * 2
    assert counts == {"p": (3, 2), "q": (3, 2)}


def test_merge_through_the_cli(tmp_path):
    folder = _write_folder_corpus(tmp_path / "c1")
    out = tmp_path / "m.parquet"
    assert cli.main(["merge", "--out", str(out), f"v2={folder}"]) == 0
    assert pq.read_table(out).column("conversation_id").to_pylist() == ["v2_b", "v2_b", "v2_a"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["v2/tmp/corpus"], "no '='"),
        (["v2=a", "v3=b", "v2=c"], "duplicate tag 'v2'"),
        (["=a"], "invalid tag ''"),
        (["a_b=x"], "invalid tag 'a_b'"),
        (["v2="], "empty corpus"),
    ],
)
def test_bad_input_arguments_raise_config_error(values, message):
    with pytest.raises(ConfigError, match=message):
        parse_inputs(values)


def test_parse_inputs_keeps_order_and_splits_at_first_equals():
    assert parse_inputs(["b=s3://bk/x=1", "a.1-x=/c"]) == [("b", "s3://bk/x=1"), ("a.1-x", "/c")]


def test_bad_arguments_exit_2_before_reading(tmp_path, capsys):
    folder = _write_folder_corpus(tmp_path / "c1")
    out = tmp_path / "m.parquet"
    assert cli.main(["merge", "--out", str(out), folder]) == 2
    assert "no '='" in capsys.readouterr().err
    assert cli.main(["merge", "--out", str(out), f"a={folder}", f"a={folder}"]) == 2
    assert "duplicate tag" in capsys.readouterr().err
    assert cli.main(["merge", "--out", str(tmp_path / "m.csv"), f"a={folder}"]) == 2
    assert not out.exists()


def test_unreadable_inputs_are_typed_and_exit_2(tmp_path, capsys):
    folder = _write_folder_corpus(tmp_path / "c1")
    missing = str(tmp_path / "nope")
    with pytest.raises(ManifestError, match="not found"):
        merge_manifests([("a", folder), ("b", missing)])
    corrupt = tmp_path / "bad.parquet"
    corrupt.write_bytes(b"not parquet at all")
    with pytest.raises(ManifestError):
        merge_manifests([("a", str(corrupt))])
    out = tmp_path / "m.parquet"
    assert cli.main(["merge", "--out", str(out), f"a={folder}", f"b={missing}"]) == 2
    assert "manifest not found" in capsys.readouterr().err
    assert not out.exists()


def test_input_missing_a_required_column_is_rejected(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"conversation_id": "a", "utterance_index": 0, "speaker": "s"}))
    with pytest.raises(ManifestError, match="audio_uri"):
        merge_manifests([("a", str(path))])


def test_conflicting_extra_column_types_are_bad_input():
    first = pa.table({"conversation_id": ["a"], "expressive": pa.array([True])})
    second = pa.table({"conversation_id": ["b"], "expressive": pa.array([[1]])})
    with pytest.raises(BadInputError, match="'expressive' is bool in input 'p'"):
        merged_schema([("p", first), ("q", second)])


def test_extra_column_types_promote_losslessly():
    first = pa.table({"rate": pa.array([1], pa.int16())})
    second = pa.table({"rate": pa.array([2], pa.int64())})
    schema = merged_schema([("p", first), ("q", second)])
    assert schema.field("rate").type == pa.int64()
