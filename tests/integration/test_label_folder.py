"""``dpm label --input`` on a folder (local, and an s3:// prefix) of recordings without a
manifest: one conversation per file, stereo channels as speakers, a mono recording as one
unknown speaker cut into turns, a sidecar NAME.rttm as diarization, a text file an error row."""

from __future__ import annotations

import posixpath
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from dpm_worker.storage import get_filesystem
from tests.integration.conftest import run_label
from tests.integration.test_label_job import JOB, read_table

pytestmark = pytest.mark.integration

SPEECH = Path(__file__).parents[1] / "fixtures" / "real_speech"
SECONDS = 12
RTTM = """SPEAKER mono_rttm 1 0.50 3.00 <NA> <NA> alice <NA> <NA>
SPEAKER mono_rttm 1 4.00 2.50 <NA> <NA> bob <NA> <NA>
SPEAKER mono_rttm 1 7.00 4.00 <NA> <NA> alice <NA> <NA>
"""


def make_folder(root: Path) -> Path:
    """calls/stereo.wav, calls/mono.flac, calls/sub/mono_rttm.wav + .rttm, calls/notes.txt."""
    dev, sr = sf.read(SPEECH / "dev00.flac", dtype="float32")
    tst, _ = sf.read(SPEECH / "tst00.flac", dtype="float32")
    n = SECONDS * sr
    folder = root / "calls"
    (folder / "sub").mkdir(parents=True)
    sf.write(folder / "stereo.wav", np.stack([dev[:n], dev[n : 2 * n]], axis=1), sr)
    sf.write(folder / "mono.flac", tst[:n], sr)
    sf.write(folder / "sub" / "mono_rttm.wav", dev[-n:], sr)
    (folder / "sub" / "mono_rttm.rttm").write_text(RTTM)
    (folder / "notes.txt").write_text("call notes, not a recording\n")
    return folder


def check_run(out: str, result) -> None:
    assert result.returncode == 3, result.stdout + result.stderr  # finished, with error rows
    emotions = read_table(out, "emotions")
    errors = read_table(out, "errors")
    assert sorted(emotions["conversation_id"].unique()) == [
        "mono.flac",
        "stereo.wav",
        "sub/mono_rttm.wav",
    ]
    by_conv = {cid: frame for cid, frame in emotions.groupby("conversation_id")}
    stereo = by_conv["stereo.wav"]
    assert set(stereo["speaker"]) == {"ch0", "ch1"}
    mono = by_conv["mono.flac"]
    assert set(mono["speaker"]) == {"unknown"} and len(mono) >= 3  # cut into turns
    assert (mono["end_s"] - mono["start_s"]).max() <= 4.0 + 1e-3  # segments.max_s
    diarized = by_conv["sub/mono_rttm.wav"].sort_values("utterance_index")
    assert list(diarized["speaker"]) == ["alice", "bob", "alice"]
    assert np.allclose(diarized["start_s"], [0.5, 4.0, 7.0])
    for frame in by_conv.values():
        probs = frame[[c for c in frame.columns if c.startswith("p_")]].to_numpy()
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert len(errors) == 1
    error = errors.iloc[0]
    assert error["conversation_id"] == "notes.txt" and error["error_type"] == "AudioError"
    assert "unrecognised or unsupported audio format" in error["message"]
    assert str(error["input_uri"]).endswith("calls/notes.txt")


def test_label_a_local_folder_of_recordings(tmp_path, ray_address, tiny_model) -> None:
    folder = make_folder(tmp_path)
    out = str(tmp_path / "out")
    result = run_label(
        "--input", str(folder), "--output", out, "--model", tiny_model, "--address",
        ray_address, "--run-id", "folder", *JOB, timeout=900,
    )  # fmt: skip
    check_run(out, result)
    # The listing the run labeled is kept with the run, and is what `dpm manifest files` writes.
    listed = pq.read_table(Path(out) / "_runs" / "folder" / "manifest.parquet").to_pandas()
    written = tmp_path / "m.parquet"
    from pipelines import cli

    assert cli.main(["manifest", "files", str(folder), "--out", str(written)]) == 0
    pd.testing.assert_frame_equal(pq.read_table(written).to_pandas(), listed)
    assert list(listed["conversation_id"]) == [
        "mono.flac",
        "notes.txt",
        "stereo.wav",
        "sub/mono_rttm.wav",
    ]
    assert listed["rttm_uri"].notna().tolist() == [False, False, False, True]


def test_label_an_s3_prefix_of_recordings(tmp_path, s3_bucket, ray_address, tiny_model) -> None:
    folder = make_folder(tmp_path)
    prefix = f"s3://{s3_bucket}/incoming/calls"
    fs, path = get_filesystem(prefix)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):  # file by file: no
        fs.put_file(str(file), f"{path}/{file.relative_to(folder).as_posix()}")  # nesting
    fs.invalidate_cache()
    assert sorted(posixpath.relpath(p, path) for p in fs.find(path)) == [
        "mono.flac",
        "notes.txt",
        "stereo.wav",
        "sub/mono_rttm.rttm",
        "sub/mono_rttm.wav",
    ]
    out = f"s3://{s3_bucket}/out"
    result = run_label(
        "--input", prefix, "--output", out, "--model", tiny_model, "--address", ray_address,
        "--run-id", "bucket", *JOB, timeout=900,
    )  # fmt: skip
    check_run(out, result)
