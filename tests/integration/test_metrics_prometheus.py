"""The job's Prometheus metrics, scraped by a real Prometheus from a real Ray cluster, equal the
tables the job wrote.

A Ray head of our own (``infra/ray_local.sh``: loopback, own temp dir, token auth) exports
every process's metrics each second (``RAY_metrics_report_interval_ms``, 10 s by default).
Debian's ``prometheus`` runs on 127.0.0.1 with its own storage folder and the config of
``infra/prometheus/`` (only the service-discovery file's path, the intervals and the rule file's
absolute path are filled in), so it finds the node through the discovery file Ray writes.
``dpm label`` labels three small conversations (one with a bad row) and one whose recording is
missing; then Prometheus's HTTP API must report exactly the tables' counts.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.integration.conftest import FAIR_SHARE, REPO, run_label
from tests.integration.test_label_job import read_table
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

RUN_ID = "metrics-1"
REPORT_MS = "1000"  # Ray's export interval for this cluster (and the driver)
DEADLINE_S = 90.0


def _exports(text: str) -> dict[str, str]:
    return {
        key: value
        for line in text.splitlines()
        if line.startswith("export ")
        for key, _, value in [line[len("export ") :].partition("=")]
    }


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head of our own that exports metrics every second; stopped (only it) at the end."""
    state = tempfile.mkdtemp(prefix="dpmpm-", dir="/tmp")  # short: Ray's unix sockets live here
    env = {
        **os.environ,
        **FAIR_SHARE,
        "DPM_RAY_STATE_DIR": state,
        "DPM_RAY_CPUS": "2",
        "RAY_metrics_report_interval_ms": REPORT_MS,
    }
    env.pop("RAY_ADDRESS", None)
    script = str(REPO / "infra" / "ray_local.sh")
    started = subprocess.run(
        ["bash", script, "start"], env=env, capture_output=True, text=True, timeout=180
    )
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield {"state": state, "env": {**env, **_exports(started.stdout)}}
    finally:
        stopped = subprocess.run(
            ["bash", script, "stop"], env=env, capture_output=True, text=True, timeout=90
        )
        shutil.rmtree(state, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    try:
        return wait_until(check, deadline_s, what, interval_s=0.5)
    except TimeoutError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def prometheus(ray_cluster, tmp_path_factory):
    """Debian's Prometheus on 127.0.0.1 with infra/prometheus's config; its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: `make setup` installs Debian's prometheus package")
    folder = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((REPO / "infra" / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [
        str(REPO / "infra" / "prometheus" / name) for name in config["rule_files"]
    ]
    (sd,) = config["scrape_configs"][0]["file_sd_configs"]
    discovery = Path(ray_cluster["state"]) / "t" / Path(sd["files"][0]).name
    sd.update(files=[str(discovery)], refresh_interval="1s")
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = open(folder / "prometheus.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url, server), "prometheus to be ready")
        listening = {
            c.laddr.ip for c in psutil.Process(server.pid).net_connections() if c.status == "LISTEN"
        }
        assert listening == {"127.0.0.1"}, listening
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
        log.close()


def _ready(url: str, server: subprocess.Popen) -> bool:
    if server.poll() is not None:
        pytest.fail(f"prometheus exited with {server.returncode}")
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def api(url: str, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{query}", timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def values(url: str, expr: str) -> dict[str, float]:
    """An instant query's result: the first label value of each series (or '') -> value."""
    result = api(url, "query", query=expr)["result"]
    return {next(iter(r["metric"].values()), ""): float(r["value"][1]) for r in result}


def corpus_with_bad_rows(folder: Path) -> Path:
    """Three tiny conversations, one with a row past its recording's end, and one whose
    recording is missing (its every row fails)."""
    from dpm_worker.corpus import SynthConfig, generate_corpus

    generate_corpus(
        str(folder), SynthConfig(conversations=3, seed=25, min_utterances=3, max_utterances=4)
    )
    rows = pq.read_table(folder / "manifest.parquet").to_pylist()
    first = [r for r in rows if r["conversation_id"] == rows[0]["conversation_id"]]
    past_end = {**first[-1], "utterance_index": len(first), "start_s": 900.0, "end_s": 901.5}
    missing = [
        {**r, "conversation_id": "missing_audio", "audio_uri": "audio/missing.flac"}
        for r in first[:2]
    ]
    pq.write_table(pa.Table.from_pylist([*rows, past_end, *missing]), folder / "manifest.parquet")
    return folder / "manifest.parquet"


def test_prometheus_counts_equal_the_tables(ray_cluster, prometheus, tiny_model, tmp_path):
    manifest = corpus_with_bad_rows(tmp_path / "corpus")
    out = str(tmp_path / "tables")

    def label() -> subprocess.CompletedProcess:
        return run_label(
            *("--input", str(manifest), "--output", out, "--model", tiny_model),
            *("--address", ray_cluster["env"]["RAY_ADDRESS"], "--run-id", RUN_ID),
            *("--actors", "2", "--cpus-per-actor", "0.5", "--slots-per-actor", "1"),
            "progress_interval_s=2",
            env={k: v for k, v in ray_cluster["env"].items() if k.startswith(("RAY_", "DPM_"))},
            timeout=900,
        )

    result = label()
    assert result.returncode == 3, result.stdout + result.stderr[-3000:]  # partial: error rows
    emotions, errors = read_table(out, "emotions"), read_table(out, "errors")
    by_type = errors.groupby("error_type").size().to_dict()
    assert by_type == {"AudioError": 2, "SegmentError": 1}, by_type
    committed = emotions["conversation_id"].nunique()
    failed = len(set(errors["conversation_id"]) - set(emotions["conversation_id"]))
    assert (committed, failed) == (3, 1)
    model_id = emotions["model_id"].iloc[0]

    run = f'run_id="{RUN_ID}"'
    expected = {
        f"sum(ray_dpm_utterances_labeled_total{{{run}}})": {"": len(emotions)},
        f"sum(ray_dpm_conversations_committed_total{{{run}}})": {"": committed},
        f"sum(ray_dpm_conversations_failed_total{{{run}}})": {"": failed},
        f"sum by (error_type) (ray_dpm_error_rows_total{{{run}}})": by_type,
        # one slot: the one-conversation path takes one DPM step per utterance
        f"sum(ray_dpm_step_seconds_count{{{run}}})": {"": len(emotions)},
        f"sum(ray_dpm_conversation_seconds_count{{{run}}})": {"": committed + failed},
        f"sum(ray_dpm_runs_succeeded_total{{{run}}})": {"": 1},
        f"sum by (model_id) (ray_dpm_utterances_labeled_total{{{run}}})": {model_id: len(emotions)},
    }

    # Ray exports each second and Prometheus scrapes each second: poll until the last
    # increments arrived, then compare (the failure message shows every query's result).
    def current() -> dict[str, dict[str, float]]:
        return {q: values(prometheus, q) for q in expected}

    try:
        wait_for(lambda: current() == expected, "the metrics to equal the tables")
    finally:
        assert current() == expected

    # The same run again: nothing left to label, no actor started, and the driver still
    # reports the conversations it skipped and the second _SUCCESS (a quiet night).
    again = label()
    assert again.returncode == 3 and "nothing to do" in again.stdout, again.stdout
    assert "actor(s) with" not in again.stderr  # no actor was started
    quiet = {
        f"sum by (reason) (ray_dpm_conversations_skipped_total{{{run}}})": {"committed": 4},
        f"sum(ray_dpm_runs_succeeded_total{{{run}}})": {"": 2},
        f"sum(ray_dpm_utterances_labeled_total{{{run}}})": {"": len(emotions)},
    }
    wait_for(
        lambda: {q: values(prometheus, q) for q in quiet} == quiet,
        f"the re-run's metrics {quiet}",
    )

    # Audio seconds: the labeled segments' lengths (to a sample per utterance).
    audio = values(prometheus, f"sum(ray_dpm_audio_seconds_labeled_total{{{run}}})")[""]
    assert audio == pytest.approx((emotions["end_s"] - emotions["start_s"]).sum(), abs=0.01)
    # Prometheus found the node through Ray's discovery file, and the alert rules of
    # infra/prometheus evaluate on these series without errors.
    targets = api(prometheus, "targets")["activeTargets"]
    assert any(t["health"] == "up" and t["labels"]["job"] == "ray" for t in targets), targets
    rules = [r for g in api(prometheus, "rules")["groups"] for r in g["rules"]]
    assert len(rules) == 5
    wait_for(
        lambda: all(
            r["health"] == "ok" for g in api(prometheus, "rules")["groups"] for r in g["rules"]
        ),
        "every alert rule to evaluate cleanly",
    )
