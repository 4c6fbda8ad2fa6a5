"""``dpm bench throughput --metrics-cost 1`` through the CLI and the real Ray job on the shared
test cluster: one run with the Prometheus metrics on, one off, on the same generated corpus;
the JSON's ratios are those of the sides it reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.conftest import CLUSTER_ENV, REPO

pytestmark = pytest.mark.integration


def test_metrics_cost_runs_both_sides_through_the_job(tmp_path, ray_address, tiny_model) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "pipelines.cli", "bench", "throughput", "--metrics-cost", "1",
            "--conversations", "2", "--min-utterances", "2", "--max-utterances", "3",
            "--model", tiny_model, "--actors", "1", "--cpus-per-actor", "0.5",
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
    cost = report["metrics_cost"]
    on, off = cost["on"], cost["off"]
    assert on["median_schedule_s"] > 0 and off["median_schedule_s"] > 0
    assert cost["ratio_schedule_on_over_off"] == pytest.approx(
        on["median_schedule_s"] / off["median_schedule_s"], rel=1e-2
    )
