"""Pre-flight of ``dpm label``: every check and record that needs no cluster (DESIGN 7-8).

:func:`prepare` validates the manifest's columns and value types (first conversation), the model
folder (its small JSON files, no weights) and that the output can be written, then opens or
resumes the run record and, with ``--incremental``, loads the fingerprints of the earlier
committed runs with the same model and labeling config. Any problem raises ``ConfigError``,
``BadInputError`` or ``StorageError`` (``dpm label`` exits 2) before an actor starts. It
returns the :class:`~pipelines.label.job.LabelJob` that then runs on the cluster.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from dpm_worker.corpus import (
    MANIFEST_FILENAME,
    count_manifest_rows,
    iter_conversations,
    recordings_manifest,
    write_manifest,
)
from dpm_worker.errors import ConfigError, ModelError
from dpm_worker.storage import get_filesystem, is_remote
from dpm_worker.tables import (
    RunInfo,
    RunTables,
    check_writable,
    fingerprint_conversations,
    load_previous,
    new_run_id,
)
from dpm_worker.worker import ConversationWorker
from pipelines.label.config import LabelJobConfig, public_config, strip_userinfo
from pipelines.label.job import LabelJob, chain_first, fingerprint_key

log = logging.getLogger("dpm.label")


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
    from dpm_worker.model import MANIFEST_NAME, MODEL_META, default_model_path

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


def prepare(config: LabelJobConfig, worker_class: type = ConversationWorker) -> LabelJob:
    """Every check that needs no cluster: manifest columns, model, output, run record.

    Raises:
        ConfigError, BadInputError, StorageError: the job would fail; nothing was done.
    """
    config = _absolute_paths(config)
    model = describe_model(config.model)
    check_writable(config.output)
    run_id = config.run_id or (f"nightly-{new_run_id()}" if config.incremental else new_run_id())
    public = public_config(config)
    # run_date is known only once run.json is read; the placeholder never reaches a file.
    probe = RunTables(
        config.output,
        RunInfo(
            run_id=run_id,
            run_date="2000-01-01",
            labels=model["labels"],
            mode=config.labeling.mode,
            model_id=model["model_id"],
            model_fingerprint=model["fingerprint"],
            code_version=code_version(),
            config=public,
        ),
    )
    manifest = input_manifest(config.input, probe.record_uri(MANIFEST_FILENAME))
    conversations = iter_conversations(manifest)
    first = next(conversations, None)  # the first pass checks columns and value types
    record = probe.read_record("run.json")
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
    run = dataclasses.replace(probe.run, run_date=run_date)
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
    stream = fingerprint_conversations(chain_first(first, conversations))
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
        manifest_rows(manifest),
        worker_class,
        key=fp_key,
        previous=previous,
    )


def input_manifest(input_uri: str, listing_uri: str) -> str:
    """The manifest to read: ``input_uri`` itself, or for a folder (or bucket prefix) of
    recordings without ``manifest.parquet``, the listing of its files
    (``dpm_worker.corpus.recordings``) written to ``listing_uri``
    (``OUT/_runs/<run_id>/manifest.parquet``: the run's record of what it labeled). Listed
    again on a resume, so files added since join the run.
    """
    fs, path = get_filesystem(input_uri)
    try:
        folder = fs.isdir(path) and not fs.exists(f"{path.rstrip('/')}/{MANIFEST_FILENAME}")
    except Exception:  # noqa: BLE001 - the manifest reader says what is wrong with the input
        return input_uri
    if not folder:
        return input_uri
    table = recordings_manifest(fs, path)
    write_manifest(table, listing_uri)
    with_rttm = sum(v is not None for v in table.column("rttm_uri").to_pylist())
    log.info(
        "input %s has no %s: %d files listed as one conversation each (%d with an RTTM "
        "sidecar), manifest written to %s",
        strip_userinfo(input_uri),
        MANIFEST_FILENAME,
        table.num_rows,
        with_rttm,
        strip_userinfo(listing_uri),
    )
    return listing_uri


def _absolute_paths(config: LabelJobConfig) -> LabelJobConfig:
    """Local paths made absolute, so a run record compares equal from any working folder."""
    changes = {
        name: os.path.abspath(value)
        for name in ("input", "output", "model")
        if (value := getattr(config, name)) and not is_remote(value)
    }
    return dataclasses.replace(config, **changes)
