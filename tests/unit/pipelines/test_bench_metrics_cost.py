"""``dpm bench throughput --metrics-cost``: sides interleaved, each run its own output, ratios of
the medians (the job itself replaced by a scripted fake; no Ray)."""

from __future__ import annotations

import pytest

from dpm_worker.errors import DpmError
from pipelines.bench import metrics_cost


def test_sides_alternate_and_the_ratio_is_of_the_medians(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(metrics_cost, "record_call_us", lambda: {"histogram": 5.0, "gauge": 2.0})
    seconds = {False: iter([10.0, 12.0, 11.0]), True: iter([11.0, 13.0, 12.1])}
    calls: list[tuple[bool, str]] = []

    def run_side(metrics: bool, output: str) -> dict:
        calls.append((metrics, output))
        s = next(seconds[metrics])
        return {
            "exit_code": 0,
            "schedule_s": s,
            "wall_s": s + 5,
            "actor_stage_s": {"total_s": 2 * s},
            "utterances": 100,
            "conversations": 10,
        }

    report = metrics_cost.run_metrics_cost(3, str(tmp_path), run_side)
    assert [m for m, _ in calls] == [False, True, True, False, False, True]
    assert len({o for _, o in calls}) == 6  # a fresh output per run: nothing is skipped
    assert report["on"]["median_schedule_s"] == 12.1 and report["off"]["median_schedule_s"] == 11
    assert report["ratio_schedule_on_over_off"] == pytest.approx(12.1 / 11, abs=1e-4)
    assert report["ratio_actor_total_on_over_off"] == pytest.approx(12.1 / 11, abs=1e-4)
    assert report["ratio_wall_on_over_off"] == pytest.approx(17.1 / 16, abs=1e-4)
    assert report["record_calls"] == 100 + 5 * 10
    assert report["record_share_of_schedule"] == pytest.approx(150 * 5e-6 / 12.1, rel=1e-3)


def test_a_failed_run_stops_the_benchmark(tmp_path) -> None:
    def failing(metrics: bool, output: str) -> dict:
        return {"exit_code": 1}

    with pytest.raises(DpmError, match="exited 1"):
        metrics_cost.run_metrics_cost(1, str(tmp_path), failing)
