"""A validated ``dpm label`` run on the cluster: start actors, schedule, write ``_SUCCESS``.

``pipelines.label.plan.prepare`` builds a :class:`LabelJob` after every check that needs no
cluster; :meth:`LabelJob.execute` then starts the actors (``pipelines.label.actors``), streams the
uncommitted (with ``--incremental``: new or changed) conversations to them through the
scheduler, writes the run's conversation fingerprints and ``_SUCCESS``, and prints the summary
line whose exit code ``dpm label`` returns.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from dpm_worker.corpus import UtteranceRow
from dpm_worker.errors import DpmError
from dpm_worker.storage import redact
from dpm_worker.tables import (
    COMPACT_MARK,
    EMOTIONS,
    ERRORS,
    KEY_RECORD,
    SUCCESS_NAME,
    CheckpointStore,
    FingerprintKey,
    PreviousFingerprints,
    RunInfo,
    RunTables,
    RunWarning,
    conversation_key,
    labeling_hash,
    write_fingerprints,
)
from dpm_worker.worker import ConversationWorker
from pipelines.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL
from pipelines.label.actors import connect, start_actors
from pipelines.label.config import LabelJobConfig
from pipelines.label.metrics import DriverMetrics

log = logging.getLogger("dpm.label")


def finish(code: int, message: str) -> int:
    """Print the final summary line (stdout) and return the exit code."""
    meaning = {0: "ok", 1: "failed", 2: "usage", 3: "partial"}[code]
    print(f"dpm label: exit {code} ({meaning}): {redact(message)}", flush=True)
    return code


class LabelJob:
    """A validated job, ready to touch the cluster."""

    def __init__(
        self,
        config: LabelJobConfig,
        run: RunInfo,
        tables: RunTables,
        conversations: Iterator[tuple[str, list[UtteranceRow], str]],
        committed: set[str],
        total_rows: int | None,
        worker_class: type = ConversationWorker,
        key: FingerprintKey | None = None,
        previous: PreviousFingerprints | None = None,
    ) -> None:
        self.config = config
        self.run = run
        self.tables = tables
        self.conversations = conversations
        self.committed = committed
        self.total_rows = total_rows
        self.worker_class = worker_class
        self.key = key or fingerprint_key(config, run.model_fingerprint)
        # None: not incremental (every uncommitted conversation is labeled).
        self.previous = previous
        # Fingerprints of the conversations this run may commit (kept in its run records).
        self.fingerprints: dict[str, str] = {}
        self.progress: Any = None
        # Wall time of the phases (actors_s: start + model load, schedule_s: labeling).
        self.timings: dict[str, float] = {}

    def execute(self) -> int:
        """Start Ray and the actors, schedule, write ``_SUCCESS``; returns the exit code."""
        from pipelines.label.bookkeeping import Progress
        from pipelines.label.scheduler import ConversationScheduler

        progress = self.progress = Progress(total_rows=self.total_rows)
        started_at = dt.datetime.now(dt.UTC)
        lost: list[tuple[str, str]] = []
        metrics: DriverMetrics | None = None
        try:
            pending = self._uncommitted(progress)
            # Peek first: a run with nothing left to label (a quiet night, a finished run)
            # never starts the cluster's actors or loads the model.
            first = next(pending, None)
            if first is None:
                log.info("nothing to label: every conversation is committed or unchanged")
                # A quiet night on a cluster still reports (DpmNoRunStarted must not fire).
                if self.config.metrics and (self.config.address or os.environ.get("RAY_ADDRESS")):
                    connect(self.config.address)
                    metrics = DriverMetrics(
                        self.run.run_id, self.run.model_id, started_at.timestamp()
                    )
            else:
                clock = time.monotonic()
                handles = start_actors(self.config, self.run, self.worker_class)
                self.timings["actors_s"] = time.monotonic() - clock
                if self.config.metrics:  # the driver has joined Ray: its metrics can export
                    metrics = DriverMetrics(
                        self.run.run_id, self.run.model_id, started_at.timestamp()
                    )
                scheduler = ConversationScheduler(
                    handles,
                    chain_first(first, pending),
                    progress,
                    in_flight_per_actor=self.config.calls_per_actor,
                    max_attempts=self.config.max_attempts,
                    progress_interval_s=self.config.progress_interval_s,
                    conversation_timeout_s=self.config.conversation_timeout_s,
                    metrics=metrics,
                )
                clock = time.monotonic()
                scheduler.run()
                self.timings["schedule_s"] = time.monotonic() - clock
                lost = scheduler.lost
        except DpmError as exc:
            return finish(EXIT_FAILED, f"run {self.run.run_id} stopped: {exc}")
        except Exception as exc:  # noqa: BLE001 - Ray/driver failures still end in a summary
            log.exception("run %s stopped", self.run.run_id)
            return finish(
                EXIT_FAILED,
                f"run {self.run.run_id} stopped: {type(exc).__name__}: {exc}; re-run with "
                f"--run-id {self.run.run_id} to resume",
            )
        if metrics is not None:  # the last results and levels (nothing is queued any more)
            metrics.sync(progress)
        log.info(progress.line())
        if progress.stage_s:
            log.info(
                "time in actors (s): %s",
                ", ".join(f"{k[:-2]} {v:.1f}" for k, v in sorted(progress.stage_s.items())),
            )
        where = self.tables.table_uri(EMOTIONS)
        head = (
            f"run {self.run.run_id}: {progress.labeled} conversations labeled "
            f"({progress.utterances} utterances; {progress.partial} of them with failed "
            f"utterances), {progress.failed} in the errors table, {progress.error_rows} error "
            f"rows, {progress.skipped} already committed"
        )
        if progress.split_segments or progress.chunked or progress.truncated:
            head += (
                f"; fitted to the model: {progress.split_segments} segments cut from longer "
                f"regions or turns, {progress.chunked} utterances read in chunks, "
                f"{progress.truncated} truncated"
            )
        if self.previous is not None:
            head += (
                f", {progress.unchanged} unchanged since the last committed run "
                f"({len(self.previous.runs)} earlier run(s) with this model and config)"
            )
        if not (progress.labeled or progress.failed or lost):
            head = f"nothing to do: {head}"
        if lost:
            names = ", ".join(c for c, _ in lost[:5])
            return finish(
                EXIT_FAILED,
                f"{head}, {len(lost)} NOT labeled ({names}; last error: "
                f"{lost[-1][1]}); re-run with --run-id {self.run.run_id} to finish",
            )
        # Every conversation is committed: checkpoints left by killed writers are litter now.
        CheckpointStore(self.config.output, self.run.run_id, self.tables.endpoint_url).clear()
        warnings = progress.warnings(self.config.checks)
        for warning in warnings:
            log.warning("run %s: %s", self.run.run_id, warning.message)
        counts = self._success_record(progress, started_at, warnings)
        if metrics is not None:
            metrics.succeeded()
        code = EXIT_PARTIAL if counts["errors"]["conversations"] else EXIT_OK
        warned = "".join(f"; WARNING {w.message}" for w in warnings)
        return finish(
            code,
            f"{head}; run totals: {counts['emotions']['rows']} emotion rows, "
            f"{counts['errors']['rows']} error rows; tables: {where} and "
            f"{self.tables.table_uri(ERRORS)}{warned}",
        )

    def _uncommitted(self, progress: Any) -> Iterator[tuple[str, list[UtteranceRow]]]:
        for conversation_id, rows, fingerprint in self.conversations:
            if conversation_key(conversation_id) in self.committed:
                # Committed by an earlier attempt of this run: its fingerprint goes into this
                # run's records too.
                self.fingerprints[conversation_id] = fingerprint
                progress.skipped += 1
                progress.rows_skipped += len(rows)
                continue
            if self.previous is not None and self.previous.unchanged(conversation_id, fingerprint):
                progress.unchanged += 1
                progress.rows_skipped += len(rows)
                continue
            self.fingerprints[conversation_id] = fingerprint
            yield conversation_id, rows

    def _success_record(
        self, progress: Any, started_at: dt.datetime, warnings: Sequence[RunWarning] = ()
    ) -> dict[str, Any]:
        emotions = [f for f in self.tables.run_files(EMOTIONS) if COMPACT_MARK not in f]
        errors = [f for f in self.tables.run_files(ERRORS) if COMPACT_MARK not in f]
        journal = self.tables.read_record("compaction.json") or {}
        # Only labeled conversations count as done for later incremental runs; failed ones
        # (errors table) are tried again next time, in case the failure was transient.
        labeled = set(emotions)
        kept = {
            c: fp
            for c, fp in self.fingerprints.items()
            if self.tables.file_uri(EMOTIONS, c) in labeled
        }
        write_fingerprints(self.tables, kept, self.key)
        elapsed = max(time.monotonic() - progress.started, 1e-6)
        counts = {
            "run_id": self.run.run_id,
            "run_date": self.run.run_date,
            "emotions": {
                "rows": self.tables.count_rows(EMOTIONS),
                "conversations": len(emotions) + int(journal.get("emotion_conversations", 0)),
            },
            "errors": {
                "rows": self.tables.count_rows(ERRORS),
                "conversations": len(errors) + int(journal.get("error_conversations", 0)),
            },
            "this_session": {
                "labeled": progress.labeled,
                "failed": progress.failed,
                "skipped": progress.skipped,
                "unchanged": progress.unchanged,
                "utterances": progress.utterances,
                "error_rows": progress.error_rows,
                "audio_hours": round(progress.audio_s / 3600, 6),
                "split_segments": progress.split_segments,
                "chunked_utterances": progress.chunked,
                "truncated_utterances": progress.truncated,
                "elapsed_s": round(elapsed, 3),
                "audio_hours_per_hour": round(progress.audio_s / elapsed, 3),
                "utterances_per_s": round(progress.utterances / elapsed, 3),
                "phase_seconds": {k: round(v, 3) for k, v in self.timings.items()},
                "actor_deaths": progress.actor_deaths,
                "stage_seconds": {k: round(v, 3) for k, v in progress.stage_s.items()},
                "label_counts": dict(sorted(progress.label_counts.items())),
                "mean_confidence": (
                    round(progress.confidence_sum / progress.utterances, 6)
                    if progress.utterances
                    else None
                ),
            },
            # this session's run checks (dpm_worker/tables/run_checks.py)
            "warnings": [w.to_dict() for w in warnings],
            "started_at": started_at.isoformat(),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(),
            "model_fingerprint": self.run.model_fingerprint,
            "code_version": self.run.code_version,
            KEY_RECORD: self.key.to_dict(),
            "incremental": {
                "enabled": self.previous is not None,
                "unchanged": progress.unchanged,
                "previous_runs": self.previous.runs if self.previous is not None else [],
                "fingerprints": len(kept),
            },
        }
        self.tables.write_record(SUCCESS_NAME, counts)
        return counts


def fingerprint_key(config: LabelJobConfig, model_fingerprint: str) -> FingerprintKey:
    """What a run's conversation fingerprints are valid for: the model and labeling config."""
    return FingerprintKey(
        model_fingerprint=model_fingerprint,
        labeling_hash=labeling_hash(dataclasses.asdict(config.labeling)),
    )


def chain_first(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    """``first`` (unless None, the mark of an empty stream) followed by ``rest``."""
    if first is None:
        return
    yield first
    yield from rest
