"""The metrics table and its two producers, with fake metric objects (no Ray)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from dpm_worker import telemetry
from dpm_worker.errors import ConfigError
from pipelines.label.bookkeeping import Progress
from pipelines.label.metrics import (
    BY_NAME,
    DRIVER,
    FROM_TELEMETRY,
    SPECS,
    ActorRecorder,
    DriverMetrics,
    MetricSpec,
)


class FakeMetric:
    """Records what a ``ray.util.metrics`` object would be asked to do."""

    def __init__(self, spec: MetricSpec, default_tags: dict[str, str]) -> None:
        self.spec, self.default_tags = spec, dict(default_tags)
        self.calls: list[tuple[str, float, dict | None]] = []

    def inc(self, value: float, tags: dict | None = None) -> None:
        assert value > 0  # Ray refuses anything else
        self.calls.append(("inc", value, tags))

    def set(self, value: float, tags: dict | None = None) -> None:
        self.calls.append(("set", value, tags))

    def observe(self, value: float, tags: dict | None = None) -> None:
        self.calls.append(("observe", value, tags))

    def total(self, tags: dict | None = None) -> float:
        return sum(v for op, v, t in self.calls if op == "inc" and t == tags)

    def last(self) -> float:
        return [v for op, v, _ in self.calls if op == "set"][-1]


made: list[FakeMetric] = []


def fake_factory(spec: MetricSpec, default_tags: Any) -> FakeMetric:
    metric = FakeMetric(spec, default_tags)
    made.append(metric)
    return metric


def summary(status: str, utterances: int, errors: dict[str, int], audio_s: float) -> dict:
    return {
        "status": status,
        "rows": utterances + sum(errors.values()),
        "utterances": utterances,
        "error_rows": sum(errors.values()),
        "error_types": errors,
        "audio_s": audio_s,
    }


def test_every_library_measurement_and_every_spec_has_one_producer() -> None:
    assert set(FROM_TELEMETRY) == set(telemetry.MEASUREMENTS)
    actor_side = set(FROM_TELEMETRY.values())
    assert actor_side <= set(BY_NAME) and DRIVER <= set(BY_NAME)
    assert actor_side.isdisjoint(DRIVER)
    assert actor_side | DRIVER == set(BY_NAME)  # nothing defined that nobody records
    assert len(BY_NAME) == len(SPECS)


def test_exposed_names_follow_rays_prometheus_export() -> None:
    assert BY_NAME["dpm_utterances_labeled"].exposed() == ("ray_dpm_utterances_labeled_total",)
    assert BY_NAME["dpm_slots_occupied"].exposed() == ("ray_dpm_slots_occupied",)
    assert BY_NAME["dpm_step_seconds"].exposed() == (
        "ray_dpm_step_seconds_bucket",
        "ray_dpm_step_seconds_count",
        "ray_dpm_step_seconds_sum",
    )
    assert all(spec.tag_keys[:2] == ("run_id", "model_id") for spec in SPECS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "utterances", "kind": "counter"},
        {"name": "dpm_x", "kind": "summary"},
        {"name": "dpm_x", "kind": "histogram"},
        {"name": "dpm_x", "kind": "gauge", "boundaries": (1.0,)},
    ],
)
def test_a_bad_spec_is_refused(kwargs) -> None:
    with pytest.raises(ConfigError):
        MetricSpec(description="d", **kwargs)


def test_driver_counters_add_only_what_changed_since_the_last_sync() -> None:
    made.clear()
    metrics = DriverMetrics("run-1", "model-a", started=1000.0, factory=fake_factory)
    by_name = {m.spec.name: m for m in made}
    assert all(m.default_tags == {"run_id": "run-1", "model_id": "model-a"} for m in made)
    assert set(by_name) == DRIVER
    progress = Progress(total_rows=20)
    progress.skipped, progress.rows_skipped = 1, 4
    progress.add(summary("labeled", 5, {"SegmentError": 1}, 7.5))
    metrics.sync(progress, queued=2, in_flight=3)
    progress.add(summary("failed", 0, {"AudioError": 3}, 0.0))
    progress.add(summary("labeled", 4, {"SegmentError": 2}, 2.5))
    progress.actor_deaths, progress.retries = 1, 2
    metrics.sync(progress, queued=0, in_flight=1)
    metrics.sync(progress)  # nothing new: no increments
    metrics.succeeded()

    assert by_name["dpm_utterances_labeled"].total() == 9
    assert by_name["dpm_audio_seconds_labeled"].total() == 10.0
    assert by_name["dpm_conversations_committed"].total() == 2
    assert by_name["dpm_conversations_failed"].total() == 1
    assert by_name["dpm_manifest_rows_done"].total() == 15
    errors = by_name["dpm_error_rows"]
    assert errors.total({"error_type": "SegmentError"}) == 3
    assert errors.total({"error_type": "AudioError"}) == 3
    skipped = by_name["dpm_conversations_skipped"]
    assert (
        skipped.total({"reason": "committed"}) == 1 and skipped.total({"reason": "unchanged"}) == 0
    )
    assert by_name["dpm_actor_deaths"].total() == 1 and by_name["dpm_retries"].total() == 2
    assert by_name["dpm_runs_succeeded"].total() == 1
    assert by_name["dpm_conversations_given_up"].calls == []
    assert by_name["dpm_conversations_queued"].last() == 0
    assert by_name["dpm_conversations_in_flight"].last() == 0
    assert by_name["dpm_rows_remaining"].last() == 20 - 15 - 4
    assert by_name["dpm_run_start_time_seconds"].last() == 1000.0


def test_actor_recorder_pickles_without_its_metrics_and_applies_each_kind() -> None:
    made.clear()
    recorder = ActorRecorder("run-1", "model-a", factory=fake_factory)
    recorder(telemetry.STEP_S, 0.25)
    travelled = pickle.loads(pickle.dumps(recorder))  # what Ray does to reach the actor
    assert travelled.tags == {"run_id": "run-1", "model_id": "model-a"}
    assert travelled._metrics == {}
    made.clear()
    travelled(telemetry.STEP_S, 0.5)
    travelled(telemetry.STEP_S, 0.125)
    travelled(telemetry.CHECKPOINT, 1)
    travelled(telemetry.SLOTS_OCCUPIED, 3)
    travelled(telemetry.SLOTS_OCCUPIED, 0)
    by_name = {m.spec.name: m for m in made}
    assert len(made) == 3  # one metric object per name, made on first use
    assert by_name["dpm_step_seconds"].calls == [("observe", 0.5, None), ("observe", 0.125, None)]
    assert by_name["dpm_checkpoints_written"].calls == [("inc", 1, None)]
    assert by_name["dpm_slots_occupied"].calls == [("set", 3, None), ("set", 0, None)]
    with pytest.raises(KeyError):
        travelled("not_a_measurement", 1.0)
