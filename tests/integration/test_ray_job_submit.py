"""`ray job submit` end to end: the production submission path on a real local cluster.

Starts its own Ray head with ``infra/ray_local.sh`` (loopback, own temp dir and ports, token
auth on), submits ``python -m pipelines.label_corpus`` with ``--working-dir`` through the Ray
CLI exactly as an operator would, waits for SUCCEEDED, checks the tables on the local S3
endpoint, and stops only the cluster it started (other Ray clusters on the machine survive).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid

import psutil
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from dpm_worker.storage import get_filesystem
from tests.integration.conftest import FAIR_SHARE, REPO, upload
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

RAY = str(REPO / ".venv" / "bin" / "ray")
JOB_TIMEOUT_S = 240
# What an operator passes for a real cluster too: ship the code, not caches or local outputs.
RUNTIME_ENV = {
    "excludes": [".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", "demo_output"]
}


def _exports(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            out[key] = value
    return out


@pytest.fixture(scope="module")
def ray_cluster(local_s3):
    """A cluster of our own, started after the local S3 endpoint so its workers inherit the
    endpoint and the dummy credentials (as a real node gets them from its instance role)."""
    # Short path: Ray keeps unix sockets under it (108-byte limit).
    state = tempfile.mkdtemp(prefix="dpmrj-", dir="/tmp")
    env = {**os.environ, **FAIR_SHARE, "DPM_RAY_STATE_DIR": state, "DPM_RAY_CPUS": "2"}
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run(
        ["bash", str(REPO / "infra" / "ray_local.sh"), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        exports = _exports(started.stdout)
        assert exports["RAY_AUTH_MODE"] == "token"  # the default the script must keep
        yield {"state": state, "env": {**env, **exports}}
    finally:
        stopped = subprocess.run(
            ["bash", str(REPO / "infra" / "ray_local.sh"), "stop"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        leftovers = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if any(state in part for part in (p.info["cmdline"] or []))
        ]
        shutil.rmtree(state, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr
        assert leftovers == [], f"processes of our cluster survived stop: {leftovers}"


def _finished(status: str) -> str | None:
    return status if status in ("SUCCEEDED", "FAILED", "STOPPED") else None


def _job_status(env: dict[str, str], submission_id: str) -> dict:
    """The job's record from the job server's REST API (what `ray job status` reads)."""
    request = urllib.request.Request(f"{env['RAY_API_SERVER_ADDRESS']}/api/jobs/{submission_id}")
    with open(env["RAY_AUTH_TOKEN_PATH"]) as fh:
        request.add_header("Authorization", f"Bearer {fh.read().strip()}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_job_server_refuses_requests_without_the_token(ray_cluster):
    """Token auth is really on: no token -> 401, a wrong token -> 403."""
    url = f"{ray_cluster['env']['RAY_API_SERVER_ADDRESS']}/api/jobs/"
    for header, code in ((None, 401), ("Bearer " + "0" * 64, 403)):
        request = urllib.request.Request(url)
        if header:
            request.add_header("Authorization", header)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == code


def test_ray_job_submit_labels_the_corpus(ray_cluster, local_s3, tiny_model, tiny_corpus, tmp_path):
    env = ray_cluster["env"]
    bucket = f"job-submit-{uuid.uuid4().hex[:8]}"
    local_s3.create_bucket(bucket)
    upload(tiny_corpus, f"s3://{bucket}/corpus")
    manifest_uri = f"s3://{bucket}/corpus/manifest.parquet"
    out = f"s3://{bucket}/tables"
    submission_id = f"label-it-{uuid.uuid4().hex[:8]}"
    run_id = "nightly-2026-11-26"

    submitted = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--submission-id",
            submission_id,
            "--working-dir",
            ".",
            "--runtime-env-json",
            json.dumps(RUNTIME_ENV),
            "--no-wait",
            "--",
            "python",
            "-m",
            "pipelines.label_corpus",
            "--input",
            manifest_uri,
            "--output",
            out,
            "--model",
            tiny_model,
            "--address",
            "auto",  # inside a job: the cluster in RAY_ADDRESS
            "--run-id",
            run_id,
            "--actors",
            "1",
            "--cpus-per-actor",
            "0.5",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert submission_id in submitted.stdout + submitted.stderr

    try:
        status = wait_until(
            lambda: _finished(_job_status(env, submission_id)["status"]),
            JOB_TIMEOUT_S,
            f"end of job {submission_id}",
            interval_s=1.0,  # each probe is a `ray job status` subprocess
        )
    except TimeoutError as exc:
        status = str(exc)  # the logs below say where it stood
    logs = subprocess.run(
        [RAY, "job", "logs", submission_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert status == "SUCCEEDED", f"job {submission_id} ended {status}:\n{logs[-4000:]}"
    assert "dpm label: exit 0 (ok)" in logs

    fs, _ = get_filesystem(manifest_uri)
    fs.invalidate_cache()
    with fs.open(get_filesystem(manifest_uri)[1]) as fh:
        manifest_rows = pq.read_table(fh).num_rows
    out_fs, out_path = get_filesystem(out)
    emotions = ds.dataset(
        f"{out_path}/emotions", filesystem=out_fs, format="parquet", partitioning="hive"
    ).to_table()
    assert emotions.num_rows == manifest_rows
    assert set(emotions["run_id"].to_pylist()) == {run_id}
    assert not out_fs.exists(f"{out_path}/errors")
    success = json.loads(out_fs.cat_file(f"{out_path}/_runs/{run_id}/_SUCCESS"))
    assert success["emotions"]["rows"] == manifest_rows

    # What the operator does next: the run's report, read straight from S3.
    report = tmp_path / "report.html"
    reported = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "dpm"),
            "report",
            out,
            "--run-id",
            run_id,
            "--out",
            str(report),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert f"{manifest_rows} emotion rows, 0 error rows" in reported.stdout
    assert '<section id="gold">' in report.read_text()  # the synthetic corpus has gold labels


def test_nightly_script_submits_once_per_night(ray_cluster, tiny_model, tiny_corpus, tmp_path):
    """infra/nightly.sh: tonight's run is submitted once; a second trigger only reports it."""
    out = tmp_path / "tables"
    env = {
        **ray_cluster["env"],
        "DPM_INPUT": str(tiny_corpus / "manifest.parquet"),
        "DPM_OUTPUT": str(out),
        "DPM_MODEL": tiny_model,
        "DPM_NIGHTLY_DATE": "2026-01-02",
        "DPM_NIGHTLY_FLAGS": "--incremental --actors 1 --cpus-per-actor 0.5",
    }

    def nightly() -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(REPO / "infra" / "nightly.sh")],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=JOB_TIMEOUT_S,
        )

    first = nightly()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "submitting dpm-label-2026-01-02 (run nightly-2026-01-02)" in first.stdout
    assert "dpm label: exit 0 (ok)" in first.stdout
    assert "--incremental" in first.stdout  # the entrypoint Ray echoes
    assert (out / "_runs" / "nightly-2026-01-02" / "_SUCCESS").is_file()
    assert (out / "_reports" / "nightly-2026-01-02.html").is_file()

    second = nightly()
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    assert "already succeeded; nothing to do" in second.stdout
    assert "submitting" not in second.stdout
