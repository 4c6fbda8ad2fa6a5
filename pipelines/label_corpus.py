"""``dpm label``: the Ray job that labels a corpus into Parquet emotion tables (DESIGN 7-8).

Runs the same way as ``dpm label ARGS``, ``python -m pipelines.label_corpus ARGS`` and
``ray job submit --working-dir . -- python -m pipelines.label_corpus ARGS``. Without
``--address`` it starts an embedded local Ray; with it, it joins that cluster.

Steps: validate the config, the manifest's columns, the model folder and that the output can
be written (exit 2 on any problem, before any work); start one actor per GPU (or per
``cpus_per_actor`` CPUs); stream the uncommitted conversations to them; write the run's
conversation fingerprints and ``_SUCCESS``. With ``--incremental`` only conversations whose
fingerprint (manifest rows + recording size/ETag or mtime) differs from the latest committed
run with the same model and labeling config are scheduled; when nothing is left to label, no
actor is started.

Exit codes: 0 every conversation labeled; 3 finished with some conversations in the errors
table; 2 bad arguments, config, manifest, model or output location; 1 anything else
(including conversations the job gave up on after actor deaths; re-run with the same
``--run-id`` to finish them). The last line printed says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from dpm_worker.errors import BadInputError, ConfigError, DpmError, ModelError, StorageError
from dpm_worker.fingerprints import (
    KEY_RECORD,
    FingerprintKey,
    PreviousFingerprints,
    fingerprint_conversations,
    labeling_hash,
    load_previous,
    write_fingerprints,
)
from dpm_worker.manifest import count_manifest_rows, iter_conversations
from dpm_worker.manifest_schema import UtteranceRow
from dpm_worker.storage import get_filesystem, is_remote, redact
from dpm_worker.tables import (
    COMPACT_MARK,
    EMOTIONS,
    ERRORS,
    SUCCESS_NAME,
    RunInfo,
    RunTables,
    check_writable,
    conversation_key,
    new_run_id,
)
from dpm_worker.worker import ConversationWorker
from pipelines.actors import start_actors
from pipelines.label_config import LabelJobConfig, load_config, public_config, strip_userinfo

log = logging.getLogger("dpm.label")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", help="manifest URI (Parquet/JSONL/CSV or corpus folder)")
    parser.add_argument("--output", help="output prefix for the tables (folder or s3://...)")
    parser.add_argument("--model", help="model folder or s3:// URI (default: packaged model)")
    parser.add_argument(
        "--mode",
        choices=("utterance", "window", "full", "dpm"),
        help="labeling mode (default: dpm)",
    )
    parser.add_argument("--run-id", help="run id; re-using one resumes that run")
    parser.add_argument(
        "--incremental",
        action="store_true",
        default=None,
        help="label only conversations new or changed since the last committed run of the "
        "same model and config (default run id: nightly-<UTC time>)",
    )
    parser.add_argument("--address", help="Ray cluster address (default: embedded local Ray)")
    parser.add_argument("--actors", type=int, help="labeling actors (default: per GPU/CPU)")
    parser.add_argument("--gpus-per-actor", type=float, help="GPUs per actor (GPU clusters)")
    parser.add_argument("--cpus-per-actor", type=float, help="CPUs per actor (may be < 1)")
    parser.add_argument("--config", help="YAML file with any of the job's settings")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. labeling.memory.lr=5e-4 in_flight_per_actor=3",
    )


def run(args: argparse.Namespace) -> int:
    """Validate everything, then label; returns the exit code (and prints the summary line)."""
    try:
        config = load_config(
            args.config,
            {
                "input": args.input,
                "output": args.output,
                "model": args.model,
                "labeling.mode": args.mode,
                "run_id": args.run_id,
                "incremental": args.incremental,
                "address": args.address,
                "actors": args.actors,
                "gpus_per_actor": args.gpus_per_actor,
                "cpus_per_actor": args.cpus_per_actor,
            },
            args.overrides,
        )
        job = prepare(config)
    except (ConfigError, BadInputError, StorageError) as exc:
        return finish(EXIT_USAGE, f"bad arguments, config or input, nothing done: {exc}")
    return job.execute()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.label_corpus``: the same code path as ``dpm label``."""
    from pipelines.cli import main as cli_main

    return cli_main(["label", *(sys.argv[1:] if argv is None else argv)])


def finish(code: int, message: str) -> int:
    """Print the final summary line (stdout) and return the exit code."""
    meaning = {0: "ok", 1: "failed", 2: "usage", 3: "partial"}[code]
    print(f"dpm label: exit {code} ({meaning}): {redact(message)}", flush=True)
    return code


# --------------------------------------------------------------------------- preflight


def code_version() -> str:
    """The package version plus the git commit when the code runs from a checkout."""
    try:
        version = metadata.version("dpm-emotion")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{version}+g{sha}" if sha else version
    except (OSError, subprocess.SubprocessError):
        return version


def describe_model(uri: str | None) -> dict[str, Any]:
    """Labels, id and fingerprint of a model folder from its small JSON files (no weights)."""
    from dpm_worker.backbone import MODEL_META, default_model_path
    from dpm_worker.checkpoint import MANIFEST_NAME

    source = str(default_model_path()) if uri is None else uri
    try:
        fs, root = get_filesystem(source)
        manifest = json.loads(fs.cat_file(f"{root.rstrip('/')}/{MANIFEST_NAME}"))
        meta = json.loads(fs.cat_file(f"{root.rstrip('/')}/{MODEL_META}"))
        labels = tuple(meta["vocab"]["labels"])
        return {
            "uri": source,
            "labels": labels,
            "model_id": str(meta.get("model_id", source.rstrip("/").rsplit("/", 1)[-1])),
            "fingerprint": str(manifest["fingerprint"]),
        }
    except FileNotFoundError:
        raise ModelError(
            f"not a model folder (needs {MANIFEST_NAME} and {MODEL_META})", strip_userinfo(source)
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(
            f"cannot read the model's metadata: {exc}", strip_userinfo(source)
        ) from exc


def manifest_rows(uri: str) -> int | None:
    """Row count of the manifest for the ETA (Parquet: from the footers), or None."""
    try:
        return count_manifest_rows(uri)
    except Exception:  # noqa: BLE001 - only the ETA depends on it
        return None


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
        from pipelines.scheduler import ConversationScheduler, Progress

        progress = self.progress = Progress(total_rows=self.total_rows)
        started_at = dt.datetime.now(dt.UTC)
        lost: list[tuple[str, str]] = []
        try:
            pending = self._uncommitted(progress)
            # Peek first: a run with nothing left to label (a quiet night, a finished run)
            # never starts the cluster's actors or loads the model.
            first = next(pending, None)
            if first is None:
                log.info("nothing to label: every conversation is committed or unchanged")
            else:
                clock = time.monotonic()
                handles = start_actors(self.config, self.run, self.worker_class)
                self.timings["actors_s"] = time.monotonic() - clock
                scheduler = ConversationScheduler(
                    handles,
                    _chain(first, pending),
                    progress,
                    in_flight_per_actor=self.config.in_flight_per_actor,
                    max_attempts=self.config.max_attempts,
                    progress_interval_s=self.config.progress_interval_s,
                    conversation_timeout_s=self.config.conversation_timeout_s,
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
        log.info(progress.line())
        if progress.stage_s:
            log.info(
                "time in actors (s): %s",
                ", ".join(f"{k[:-2]} {v:.1f}" for k, v in sorted(progress.stage_s.items())),
            )
        where = self.tables.table_uri(EMOTIONS)
        head = (
            f"run {self.run.run_id}: {progress.labeled} conversations labeled "
            f"({progress.utterances} utterances), {progress.failed} in the errors table "
            f"({progress.error_rows} rows), {progress.skipped} already committed"
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
        counts = self._success_record(progress, started_at)
        code = EXIT_PARTIAL if counts["errors"]["conversations"] else EXIT_OK
        return finish(
            code,
            f"{head}; run totals: {counts['emotions']['rows']} emotion rows, "
            f"{counts['errors']['rows']} error rows; tables: {where} and "
            f"{self.tables.table_uri(ERRORS)}",
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

    def _success_record(self, progress: Any, started_at: dt.datetime) -> dict[str, Any]:
        emotions = [f for f in self.tables.run_files(EMOTIONS) if COMPACT_MARK not in f]
        errors = [f for f in self.tables.run_files(ERRORS) if COMPACT_MARK not in f]
        journal = self.tables.read_record("compaction.json") or {}
        # Only labeled conversations count as done for later incremental runs; failed ones
        # (errors table) are tried again next time, in case the failure was transient.
        labeled = {f.rsplit("--", 1)[-1][: -len(".parquet")] for f in emotions}
        kept = {c: fp for c, fp in self.fingerprints.items() if conversation_key(c) in labeled}
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
                "elapsed_s": round(elapsed, 3),
                "audio_hours_per_hour": round(progress.audio_s / elapsed, 3),
                "utterances_per_s": round(progress.utterances / elapsed, 3),
                "phase_seconds": {k: round(v, 3) for k, v in self.timings.items()},
                "actor_deaths": progress.actor_deaths,
                "stage_seconds": {k: round(v, 3) for k, v in progress.stage_s.items()},
            },
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


def prepare(config: LabelJobConfig, worker_class: type = ConversationWorker) -> LabelJob:
    """Every check that needs no cluster: manifest columns, model, output, run record.

    Raises:
        ConfigError, BadInputError, StorageError: the job would fail; nothing was done.
    """
    config = _absolute_paths(config)
    model = describe_model(config.model)
    conversations = iter_conversations(config.input)
    first = next(conversations, None)  # the first pass checks columns and value types
    check_writable(config.output)
    run_id = config.run_id or (f"nightly-{new_run_id()}" if config.incremental else new_run_id())
    probe = RunTables(config.output, _run_info(config, run_id, "2000-01-01", model))
    record = probe.read_record("run.json")
    public = public_config(config)
    if record is None:
        run_date = dt.datetime.now(dt.UTC).date().isoformat()
    else:
        run_date = record["run_date"]
        for key, now in (
            ("input", public["input"]),
            ("mode", config.labeling.mode),
            ("model_fingerprint", model["fingerprint"]),
        ):
            if record.get(key) != now:
                raise ConfigError(
                    f"run {run_id} was started with {key}={record.get(key)!r}, now {now!r}; "
                    "use a new --run-id"
                )
    run = _run_info(config, run_id, run_date, model)
    tables = RunTables(config.output, run)
    if record is None:
        tables.write_record(
            "run.json",
            {
                "run_id": run_id,
                "run_date": run_date,
                "input": public["input"],
                "mode": config.labeling.mode,
                "model_fingerprint": model["fingerprint"],
                "model_id": model["model_id"],
                "labels": list(model["labels"]),
                "config": public,
                "code_version": run.code_version,
            },
        )
    committed = tables.committed_keys()
    stream = fingerprint_conversations(_chain(first, conversations))
    fp_key = fingerprint_key(config, model["fingerprint"])
    previous = (
        load_previous(config.output, fp_key, exclude_run_id=run_id) if config.incremental else None
    )
    log.info(
        "run %s: input %s, output %s, model %s (%s), mode %s, %d conversations already committed",
        run_id,
        public["input"],
        public["output"],
        model["model_id"],
        model["fingerprint"][:12],
        config.labeling.mode,
        len(committed),
    )
    if previous is not None:
        log.info(
            "incremental: %d conversation fingerprints from %d earlier committed run(s) with "
            "this model and labeling config",
            len(previous.fingerprints),
            len(previous.runs),
        )
    return LabelJob(
        config,
        run,
        tables,
        stream,
        committed,
        manifest_rows(config.input),
        worker_class,
        key=fp_key,
        previous=previous,
    )


def fingerprint_key(config: LabelJobConfig, model_fingerprint: str) -> FingerprintKey:
    """What a run's conversation fingerprints are valid for: the model and labeling config."""
    return FingerprintKey(
        model_fingerprint=model_fingerprint,
        labeling_hash=labeling_hash(dataclasses.asdict(config.labeling)),
    )


def _absolute_paths(config: LabelJobConfig) -> LabelJobConfig:
    """Local paths made absolute, so a run record compares equal from any working folder."""
    changes = {
        name: os.path.abspath(value)
        for name in ("input", "output", "model")
        if (value := getattr(config, name)) and not is_remote(value)
    }
    return dataclasses.replace(config, **changes)


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    if first is None:
        return
    yield first
    yield from rest


def _run_info(config: LabelJobConfig, run_id: str, run_date: str, model: dict) -> RunInfo:
    return RunInfo(
        run_id=run_id,
        run_date=run_date,
        labels=model["labels"],
        mode=config.labeling.mode,
        model_id=model["model_id"],
        model_fingerprint=model["fingerprint"],
        code_version=code_version(),
        config=public_config(config),
    )


if __name__ == "__main__":
    sys.exit(main())
