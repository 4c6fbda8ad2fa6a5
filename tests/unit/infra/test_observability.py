"""The Prometheus config, alert rules and Grafana dashboard agree with the metrics the code
defines (``pipelines.label.metrics``), and promtool accepts them.

promtool comes with Debian's ``prometheus`` package, which ``make setup`` installs like the other
system packages; its absence is a broken setup, so these tests fail (not skip) without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.label.metrics import SPECS

REPO = Path(__file__).resolve().parents[3]
PROMETHEUS = REPO / "infra" / "prometheus"
DASHBOARD = REPO / "infra" / "grafana" / "dpm.json"
EXPOSED = {name for spec in SPECS for name in spec.exposed()}
# A metric name in PromQL: ray_dpm_... or a bare dpm_... (which Ray never exposes).
METRIC = re.compile(r"\b(?:ray_)?dpm_[a-z0-9_]+\b")


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["definition"])
    return queries


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "dpm_alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def named_metrics(queries: list[str]) -> set[str]:
    return {m for q in queries for m in METRIC.findall(q)}


def test_dashboard_queries_name_only_defined_metrics() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 14
    names = named_metrics(queries)
    assert names and names <= EXPOSED, sorted(names - EXPOSED)
    # What an operator watches (issue #25): rate, ETA, errors by type, step quantiles,
    # slot occupancy, deaths.
    joined = "\n".join(queries)
    for needed in (
        "rate(ray_dpm_audio_seconds_labeled_total",
        "ray_dpm_rows_remaining",
        "sum by (error_type) (increase(ray_dpm_error_rows_total",
        "histogram_quantile(0.99, sum by (le) (rate(ray_dpm_step_seconds_bucket",
        "sum by (WorkerId) (ray_dpm_slots_occupied",
        "ray_dpm_actor_deaths_total",
    ):
        assert needed in joined, needed


def test_alert_rules_name_only_defined_metrics() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == {
        "DpmNoProgress",
        "DpmErrorRowRateHigh",
        "DpmActorDeathBurst",
        "DpmRunMissedDeadline",
        "DpmNoRunStarted",
    }
    names = named_metrics([r["expr"] for r in rules])
    assert names and names <= EXPOSED, sorted(names - EXPOSED)


def test_a_renamed_metric_is_caught() -> None:
    """The check above is not vacuous: a query naming a metric the code lost fails it."""
    renamed = [
        q.replace("ray_dpm_step_seconds", "ray_dpm_batch_seconds") for q in dashboard_queries()
    ]
    assert named_metrics(renamed) - EXPOSED == {"ray_dpm_batch_seconds_bucket"}


def test_scrape_config_reads_rays_service_discovery_file_and_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["dpm_alerts.yml"]
    (job,) = config["scrape_configs"]
    (sd,) = job["file_sd_configs"]
    assert [Path(f).name for f in sd["files"]] == ["prom_metrics_service_discovery.json"]


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found: `make setup` installs Debian's prometheus package")
    return subprocess.run(
        [binary, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "dpm_alerts.yml"),
        ("test", "rules", "dpm_alerts_test.yml"),  # each alert fires, and only when it should
    ],
)
def test_promtool_accepts_the_config_and_the_alerts_fire_as_intended(args) -> None:
    result = promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
