"""A folder of recordings as a manifest (``dpm_worker.corpus.recordings``), on the local fs."""

from __future__ import annotations

import pytest

from dpm_worker.corpus import recordings_manifest, validate_manifest
from dpm_worker.errors import ManifestError
from dpm_worker.storage import get_filesystem


def test_every_file_is_a_conversation_in_path_order_with_its_sidecar(tmp_path) -> None:
    for name in ("b/call.WAV", "b/call.rttm", "a.mp3", "z.txt", "orphan.rttm", ".hidden.wav"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.wav").write_bytes(b"x")
    table = recordings_manifest(*get_filesystem(str(tmp_path)))
    validate_manifest(table, str(tmp_path))
    rows = table.to_pylist()
    assert [r["conversation_id"] for r in rows] == ["a.mp3", "b/call.WAV", "orphan.rttm", "z.txt"]
    assert [r["rttm_uri"] for r in rows] == [None, str(tmp_path / "b/call.rttm"), None, None]
    assert rows[1]["audio_uri"] == str(tmp_path / "b/call.WAV")
    assert {(r["utterance_index"], r["speaker"], r["start_s"], r["end_s"]) for r in rows} == {
        (0, "unknown", None, None)
    }


def test_an_empty_or_missing_folder_is_a_manifest_error_naming_it(tmp_path) -> None:
    with pytest.raises(ManifestError, match="no files") as empty:
        recordings_manifest(*get_filesystem(str(tmp_path)))
    assert str(tmp_path) in str(empty.value)
    with pytest.raises(ManifestError, match="not a folder"):
        recordings_manifest(*get_filesystem(str(tmp_path / "nope")))
