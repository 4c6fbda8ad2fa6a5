"""``dpm synth --out s3://...`` against the local S3 endpoint gives the same manifest and samples
as a local run, through the CLI and the readers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dpm_worker.audio import read_segment
from dpm_worker.corpus import DEFAULT_LABELS, read_manifest
from dpm_worker.storage import get_filesystem
from pipelines.cli import main as cli_main

pytestmark = pytest.mark.integration

ARGS = ["--conversations", "2", "--seed", "7", "--min-utterances", "4", "--max-utterances", "6"]


def test_synth_to_s3_matches_the_local_run(s3_bucket: str, tmp_path: Path) -> None:
    local, remote = str(tmp_path / "corpus"), f"s3://{s3_bucket}/corpus"
    assert cli_main(["synth", "--out", local, *ARGS]) == 0
    assert cli_main(["synth", "--out", remote, *ARGS]) == 0

    fs, root = get_filesystem(remote)
    fs.invalidate_cache()
    remote_files = sorted(p[len(root) + 1 :] for p in fs.find(root))
    local_files = sorted(str(p.relative_to(local)) for p in Path(local).rglob("*") if p.is_file())
    assert (
        remote_files
        == local_files
        == [
            "audio/conv_0000.flac",
            "audio/conv_0001.flac",
            "manifest.parquet",
        ]
    )
    for name in local_files:  # same bytes, manifest and audio
        local_sha = hashlib.sha256((Path(local) / name).read_bytes()).hexdigest()
        assert hashlib.sha256(fs.cat(f"{root}/{name}")).hexdigest() == local_sha, name

    local_table = read_manifest(local, labels=DEFAULT_LABELS)
    remote_table = read_manifest(remote, labels=DEFAULT_LABELS)
    assert (
        remote_table.num_rows
        == local_table.num_rows
        == pq.read_table(f"{local}/manifest.parquet").num_rows
    )
    drop = ["audio_uri"]  # absolute after resolution: differs by design (local path vs s3 URI)
    assert remote_table.drop(drop).equals(local_table.drop(drop))
    assert all(
        u.startswith(f"s3://{s3_bucket}/corpus/audio/")
        for u in remote_table.column("audio_uri").to_pylist()
    )

    for local_row, remote_row in zip(
        local_table.to_pylist()[:6], remote_table.to_pylist()[:6], strict=True
    ):
        span = (local_row["start_s"], local_row["end_s"], local_row["channel"])
        local_samples = read_segment(local_row["audio_uri"], *span)
        remote_samples = read_segment(remote_row["audio_uri"], *span)
        assert local_samples.shape == (round((span[1] - span[0]) * 16_000),)
        np.testing.assert_array_equal(remote_samples, local_samples)
