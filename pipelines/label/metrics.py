"""The labeling job's Prometheus metrics: every one is defined here, exported by Ray itself.

Metrics are ``ray.util.metrics`` counters, gauges and histograms. Ray's metrics agent on each
node serves them in Prometheus format on the node's metrics export port, listed in Ray's
service-discovery file (``prom_metrics_service_discovery.json``); there is no second exporter.
Prometheus sees each name with Ray's ``ray_`` namespace in front and counters with ``_total``
behind: ``dpm_utterances_labeled`` is scraped as ``ray_dpm_utterances_labeled_total``
(:meth:`MetricSpec.exposed`). Every series carries ``run_id`` and ``model_id``; Ray adds
``WorkerId``, ``NodeAddress`` and ``SessionName``, so dashboards ``sum`` over them.

Two producers, one table (:data:`SPECS`):

- the driver (:class:`DriverMetrics`): conversations committed, failed, skipped, given up,
  utterances, audio seconds and error rows by type, counted from the summaries the actors
  return (one per conversation and session, also when an actor died after committing and the
  conversation was labeled again), actor deaths and retries from the scheduler's bookkeeping,
  and the queue levels;
- the actors (:class:`ActorRecorder`): the library's measurements (``dpm_worker.telemetry``):
  step, read, tokenize and conversation seconds, checkpoints, resumes, occupied slots.

Ray exports a process's values every ``metrics_report_interval_ms`` (10 s by default) and when
the process exits normally; an actor killed hard loses the values of its last interval (the
driver's counters are unaffected). ``metrics=false`` (``dpm label --no-metrics``) turns all of it
off: actors then get the library's default ``record``, which drops everything.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dpm_worker import telemetry
from dpm_worker.errors import ConfigError

TAGS = ("run_id", "model_id")
SECONDS_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SECONDS_SLOW = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name in Ray, kind, meaning, extra tags and histogram buckets."""

    name: str
    kind: str  # counter | gauge | histogram
    description: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.startswith("dpm_"):
            raise ConfigError(f"metric names start with dpm_, got {self.name!r}")
        if self.kind not in ("counter", "gauge", "histogram"):
            raise ConfigError(f"metric kind must be counter, gauge or histogram: {self.kind!r}")
        if (self.kind == "histogram") != bool(self.boundaries):
            raise ConfigError(f"{self.name}: histograms, and only they, have boundaries")

    @property
    def tag_keys(self) -> tuple[str, ...]:
        return TAGS + self.tags

    def exposed(self) -> tuple[str, ...]:
        """The series names Prometheus scrapes for this metric from Ray's agent."""
        base = f"ray_{self.name}"
        if self.kind == "counter":
            return (f"{base}_total",)
        if self.kind == "histogram":
            return (f"{base}_bucket", f"{base}_count", f"{base}_sum")
        return (base,)


SPECS: tuple[MetricSpec, ...] = (
    # driver: counted from the conversations' summaries and the scheduler
    MetricSpec(
        "dpm_utterances_labeled", "counter", "Utterances labeled (rows in the emotions table)"
    ),
    MetricSpec("dpm_audio_seconds_labeled", "counter", "Seconds of audio labeled"),
    MetricSpec("dpm_manifest_rows_done", "counter", "Manifest rows whose conversation finished"),
    MetricSpec(
        "dpm_conversations_committed", "counter", "Conversations whose emotions file was committed"
    ),
    MetricSpec(
        "dpm_conversations_failed", "counter", "Conversations that went whole to the errors table"
    ),
    MetricSpec(
        "dpm_conversations_skipped",
        "counter",
        "Conversations not labeled: reason=unchanged (--incremental) or committed (resumed run)",
        ("reason",),
    ),
    MetricSpec(
        "dpm_conversations_given_up", "counter", "Conversations given up after max_attempts"
    ),
    MetricSpec("dpm_error_rows", "counter", "Rows written to the errors table", ("error_type",)),
    MetricSpec("dpm_actor_deaths", "counter", "Labeling actors that died (Ray restarts them)"),
    MetricSpec("dpm_retries", "counter", "Conversations queued again after a failed attempt"),
    MetricSpec(
        "dpm_runs_succeeded", "counter", "_SUCCESS written (each attempt that ends the run)"
    ),
    MetricSpec(
        "dpm_conversations_queued",
        "gauge",
        "Conversations waiting on the driver (retries, read-ahead)",
    ),
    MetricSpec(
        "dpm_conversations_in_flight", "gauge", "Conversations handed to actors, not returned"
    ),
    MetricSpec("dpm_rows_remaining", "gauge", "Manifest rows not yet done (for the ETA)"),
    MetricSpec("dpm_run_start_time_seconds", "gauge", "Unix time the driver started the run"),
    # actors: the library's measurements (dpm_worker.telemetry)
    MetricSpec(
        "dpm_step_seconds",
        "histogram",
        "Seconds per DPM step (batched over slots)",
        boundaries=SECONDS_FAST,
    ),
    MetricSpec(
        "dpm_conversation_seconds",
        "histogram",
        "Seconds per conversation in an actor",
        boundaries=SECONDS_SLOW,
    ),
    MetricSpec(
        "dpm_audio_read_seconds",
        "histogram",
        "Seconds to read a conversation's audio",
        boundaries=SECONDS_FAST,
    ),
    MetricSpec(
        "dpm_tokenize_seconds",
        "histogram",
        "Seconds to tokenize a conversation",
        boundaries=SECONDS_FAST,
    ),
    MetricSpec("dpm_checkpoints_written", "counter", "Conversation checkpoints written"),
    MetricSpec("dpm_resumes", "counter", "Conversations resumed from a checkpoint"),
    MetricSpec("dpm_slots_occupied", "gauge", "Conversations an actor is labeling now"),
)
BY_NAME = {spec.name: spec for spec in SPECS}

# dpm_worker.telemetry's measurement -> the metric it becomes
FROM_TELEMETRY = {
    telemetry.STEP_S: "dpm_step_seconds",
    telemetry.READ_S: "dpm_audio_read_seconds",
    telemetry.TOKENIZE_S: "dpm_tokenize_seconds",
    telemetry.CONVERSATION_S: "dpm_conversation_seconds",
    telemetry.CHECKPOINT: "dpm_checkpoints_written",
    telemetry.RESUME: "dpm_resumes",
    telemetry.SLOTS_OCCUPIED: "dpm_slots_occupied",
}

Factory = Callable[[MetricSpec, Mapping[str, str]], Any]
"""Makes the live metric of a spec with its default tags (Ray's, or a fake in tests)."""


def ray_metric(spec: MetricSpec, default_tags: Mapping[str, str]) -> Any:
    """The ``ray.util.metrics`` object of ``spec`` (call inside a Ray driver or actor)."""
    from ray.util import metrics

    metric: Any
    if spec.kind == "counter":
        metric = metrics.Counter(spec.name, spec.description, spec.tag_keys)
    elif spec.kind == "gauge":
        metric = metrics.Gauge(spec.name, spec.description, spec.tag_keys)
    else:
        metric = metrics.Histogram(
            spec.name, spec.description, list(spec.boundaries), spec.tag_keys
        )
    return metric.set_default_tags(dict(default_tags))


def update(metric: Any, kind: str, value: float, tags: Mapping[str, str] | None = None) -> None:
    """Apply one value the way its kind takes it (a counter ignores values <= 0)."""
    extra = dict(tags) if tags else None
    if kind == "counter":
        if value > 0:
            metric.inc(value, tags=extra)
    elif kind == "gauge":
        metric.set(value, tags=extra)
    else:
        metric.observe(value, tags=extra)


class ActorRecorder:
    """The ``record`` callback handed to each ``ConversationWorker`` (pickled into the actor).

    Metric objects are made in the actor on first use (not pickled with the callback), under
    a lock: the worker records from its caller, prefetch and slot-loop threads.

    Args:
        run_id: the run's id (a tag of every series).
        model_id: the model's id (a tag of every series).
        factory: makes a live metric (default: Ray's).
    """

    def __init__(self, run_id: str, model_id: str, factory: Factory = ray_metric) -> None:
        self.__setstate__({"tags": {"run_id": run_id, "model_id": model_id}, "factory": factory})

    def __getstate__(self) -> dict[str, Any]:
        return {"tags": self.tags, "factory": self.factory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.tags: dict[str, str] = state["tags"]
        self.factory: Factory = state["factory"]
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, value: float) -> None:
        spec = BY_NAME[FROM_TELEMETRY[name]]
        metric = self._metrics.get(spec.name)
        if metric is None:
            with self._lock:
                metric = self._metrics.get(spec.name)
                if metric is None:
                    metric = self._metrics[spec.name] = self.factory(spec, self.tags)
        update(metric, spec.kind, value)


class DriverMetrics:
    """The driver's metrics, brought up to date from the job's counters by :meth:`sync`.

    ``Progress`` and the bookkeeping already count everything the driver knows; ``sync`` adds
    what changed since its last call to the counters and sets the levels, so the scheduler's
    logic stays free of metrics.

    Args:
        run_id: the run's id.
        model_id: the model's id.
        started: the run's start (Unix seconds; default: now).
        factory: makes a live metric (default: Ray's; the driver must have joined Ray).
    """

    def __init__(
        self,
        run_id: str,
        model_id: str,
        started: float | None = None,
        factory: Factory = ray_metric,
    ) -> None:
        tags = {"run_id": run_id, "model_id": model_id}
        self.metrics = {spec.name: factory(spec, tags) for spec in SPECS if spec.name in DRIVER}
        self.seen: dict[tuple[str, str], float] = {}
        self.started = time.time() if started is None else started
        self._set("dpm_run_start_time_seconds", self.started)

    def sync(self, progress: Any, queued: int = 0, in_flight: int = 0) -> None:
        """Counters from ``progress`` (a ``Progress``), levels from the arguments."""
        for name, field in COUNTED.items():
            self._count(name, "", float(getattr(progress, field)))
        self._count("dpm_conversations_skipped", "unchanged", float(progress.unchanged))
        self._count("dpm_conversations_skipped", "committed", float(progress.skipped))
        for error_type, rows in progress.error_types.items():
            self._count("dpm_error_rows", error_type, float(rows))
        self._set("dpm_conversations_queued", queued)
        self._set("dpm_conversations_in_flight", in_flight)
        if progress.total_rows is not None:
            done = progress.rows_done + progress.rows_skipped
            self._set("dpm_rows_remaining", max(progress.total_rows - done, 0))
        self._set("dpm_run_start_time_seconds", self.started)  # kept fresh while the run lives

    def succeeded(self) -> None:
        """``_SUCCESS`` was written."""
        update(self.metrics["dpm_runs_succeeded"], "counter", 1)

    def _count(self, name: str, tag: str, total: float) -> None:
        delta = total - self.seen.get((name, tag), 0.0)
        if delta > 0:
            spec = BY_NAME[name]
            tags = {spec.tags[0]: tag} if spec.tags else None
            update(self.metrics[name], "counter", delta, tags)
            self.seen[(name, tag)] = total

    def _set(self, name: str, value: float) -> None:
        update(self.metrics[name], "gauge", value)


# Progress field behind each driver counter (the skipped and error-row counters have tags).
COUNTED = {
    "dpm_utterances_labeled": "utterances",
    "dpm_audio_seconds_labeled": "audio_s",
    "dpm_manifest_rows_done": "rows_done",
    "dpm_conversations_committed": "labeled",
    "dpm_conversations_failed": "failed",
    "dpm_conversations_given_up": "lost",
    "dpm_actor_deaths": "actor_deaths",
    "dpm_retries": "retries",
}
DRIVER = {
    *COUNTED,
    "dpm_conversations_skipped",
    "dpm_error_rows",
    "dpm_runs_succeeded",
    "dpm_conversations_queued",
    "dpm_conversations_in_flight",
    "dpm_rows_remaining",
    "dpm_run_start_time_seconds",
}
