"""Manifests and corpus layouts read from the local S3 endpoint equal the same read from disk."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpm_worker import storage
from dpm_worker.audio import clip_duration
from dpm_worker.corpus import iter_conversations, read_iemocap, read_manifest, read_meld
from dpm_worker.errors import ManifestError
from tests.fixtures.corpus_trees import build_iemocap_tree, build_meld_tree

pytestmark = pytest.mark.integration


def _upload(local_dir, uri: str) -> None:
    fs, path = storage.get_filesystem(uri)
    for folder, _, files in os.walk(local_dir):
        for name in files:
            src = os.path.join(folder, name)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            with open(src, "rb") as fh:
                fs.pipe_file(f"{path}/{rel}", fh.read())
    fs.invalidate_cache()


def _strip(table: pa.Table, prefix: str) -> pa.Table:
    uris = table["audio_uri"].to_pylist()
    assert all(u.startswith(prefix) for u in uris), (prefix, uris[:2])
    position = table.schema.get_field_index("audio_uri")
    stripped = pa.array([u[len(prefix) :] for u in uris], pa.string())
    return table.set_column(position, table.schema.field(position), stripped)


@pytest.fixture
def local_corpus(tmp_path):
    """A manifest with relative and absolute-in-corpus audio paths, plus the audio files."""
    root = tmp_path / "corpus"
    (root / "audio").mkdir(parents=True)
    for name in ("a.wav", "b.wav"):
        (root / "audio" / name).write_bytes(b"RIFF")
    table = pa.table(
        {
            "conversation_id": ["b", "a", "a", "b", "a"],
            "utterance_index": [1, 2, 0, 0, 1],
            "speaker": ["S1", "S2", "S1", "S2", "S2"],
            "audio_uri": [
                "audio/b.wav",
                "audio/a.wav",
                "audio/a.wav",
                "audio/b.wav",
                "audio/a.wav",
            ],
            "start_s": [1.0, 2.0, 0.0, 0.0, 1.0],
            "end_s": [2.0, 3.0, 1.0, 1.0, 2.0],
            "channel": [0, 1, 0, 1, 1],
            "emotion": ["happy", "sad", "neutral", "angry", "sad"],
            "expressive": [True, False, True, False, True],
        }
    )
    pq.write_table(table, root / "manifest.parquet")
    return root


def test_manifest_from_s3_equals_manifest_from_disk(local_corpus, s3_bucket):
    uri = f"s3://{s3_bucket}/corpora/x"
    _upload(local_corpus, uri)
    local = read_manifest(str(local_corpus), labels=["neutral", "happy", "sad", "angry"])
    remote = read_manifest(f"{uri}/manifest.parquet", labels=["neutral", "happy", "sad", "angry"])
    assert remote["audio_uri"][0].as_py() == f"{uri}/audio/a.wav"
    assert _strip(remote, uri).equals(_strip(local, str(local_corpus)))
    # The folder form and the streaming reader agree too.
    assert _strip(read_manifest(uri), uri).equals(_strip(local, str(local_corpus)))
    streamed = dict(iter_conversations(uri, batch_rows=2))
    assert [r.utterance_index for r in streamed["a"]] == [0, 1, 2]
    assert streamed["b"][0].audio_uri == f"{uri}/audio/b.wav"
    assert streamed["b"][0].extra == {"expressive": False}


def test_missing_manifest_on_s3_names_the_uri(s3_bucket):
    uri = f"s3://{s3_bucket}/nothing/manifest.parquet"
    with pytest.raises(ManifestError, match="manifest not found") as info:
        read_manifest(uri)
    assert uri in str(info.value)


def test_corpus_layouts_from_s3_equal_disk(tmp_path, s3_bucket):
    iemocap = build_iemocap_tree(tmp_path)
    meld = build_meld_tree(tmp_path)
    _upload(iemocap, f"s3://{s3_bucket}/IEMOCAP_full_release")
    _upload(meld, f"s3://{s3_bucket}/MELD.Raw")

    local, local_summary = read_iemocap(str(iemocap))
    remote, remote_summary = read_iemocap(f"s3://{s3_bucket}/IEMOCAP_full_release")
    assert _strip(remote, f"s3://{s3_bucket}/IEMOCAP_full_release").equals(
        _strip(local, str(iemocap))
    )
    assert remote_summary == local_summary

    local, local_summary = read_meld(str(meld), "train", probe=clip_duration)
    remote, remote_summary = read_meld(f"s3://{s3_bucket}/MELD.Raw/", "train", probe=clip_duration)
    assert _strip(remote, f"s3://{s3_bucket}/MELD.Raw").equals(_strip(local, str(meld)))
    assert remote_summary == local_summary


def test_cli_writes_manifest_to_s3(tmp_path, s3_bucket, capsys):
    from pipelines.cli import main

    iemocap = build_iemocap_tree(tmp_path)
    out = f"s3://{s3_bucket}/manifests/iemocap.parquet"
    assert main(["manifest", "iemocap", str(iemocap), "--out", out]) == 0
    assert "kept 9 utterances" in capsys.readouterr().out
    assert read_manifest(out).num_rows == 9
