"""``dpm bench scale`` smoke test: the real scheduler pushes two tiny manifests through the
session's Ray cluster with the scheduling-only NullWorker; the JSON it prints is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import CLUSTER_ENV, REPO

pytestmark = pytest.mark.integration


def test_bench_scale_schedules_both_manifests(tmp_path, ray_address) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "pipelines.cli", "bench", "scale", "--conversations", "8",
            "--baseline", "4", "--utterances", "2", "--actors", "1", "--cpus-per-actor", "0.5",
            "--address", ray_address, "--workdir", str(tmp_path),
        ],
        cwd=REPO,
        env={**os.environ, **CLUSTER_ENV},
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    small, large = report["small"], report["large"]
    assert (small["conversations"], large["conversations"]) == (4, 8)
    assert (small["rows"], large["rows"]) == (8, 16) and report["manifest_ratio"] == 2.0
    for side in (small, large):
        assert side["exit_code"] == 0 and side["driver_peak_rss_mb"] > 0
        assert side["driver_peak_rss_mb"] >= side["driver_rss_before_mb"]
        # every conversation landed with the NullWorker's uniform rows
        rows = pq.read_table(tmp_path / f"out-{side['conversations']}" / "emotions")
        assert rows.num_rows == side["rows"]
