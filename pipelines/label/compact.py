"""``dpm compact``: merge a run's per-conversation Parquet files into a few large ones.

Warehouses prefer files of ~10^5-10^6 rows to thousands of small ones. For each table
(emotions, errors) the run's per-conversation files are grouped up to ``--target-rows`` and
each group is written as ``<run_id>--compact-NNNNN.parquet`` in the same partition.

Crash safety comes from a journal, ``_runs/<run_id>/compaction.json``, updated between steps:
``planned`` (outputs may be partial: they are deleted and the step redone), then outputs
written, then ``written`` (the compacted conversations' keys recorded, so a resumed labeling
run still skips them), then the inputs deleted, then done. Between ``written`` and the
deletions a reader can briefly see both copies: plain file tables have no transactions.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dpm_worker.errors import ConfigError
from dpm_worker.storage import get_filesystem, join_uri
from dpm_worker.tables import (
    COMPACT_MARK,
    EMOTIONS,
    ERRORS,
    RunInfo,
    RunTables,
    row_counts,
    validate_run_id,
    write_parquet_atomic,
)

log = logging.getLogger("dpm.compact")
JOURNAL = "compaction.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="the labeling job's output prefix")
    parser.add_argument("--run-id", required=True, help="the run to compact")
    parser.add_argument("--target-rows", type=int, default=500_000, help="rows per merged file")


def run(args: argparse.Namespace) -> int:
    if args.target_rows < 1:
        raise ConfigError(f"--target-rows must be >= 1, got {args.target_rows}")
    summary = compact_run(args.output, validate_run_id(args.run_id), args.target_rows)
    print(json.dumps(summary, indent=2))
    return 0


def open_run(output_uri: str, run_id: str) -> RunTables:
    """The tables of an existing run, from its ``run.json`` record."""
    probe = RunTables(output_uri, RunInfo(run_id, "2000-01-01", ("a", "b"), "", "", "", ""))
    record = probe.read_record("run.json")
    if record is None:
        raise ConfigError(f"no run {run_id!r} under {output_uri} (no _runs/{run_id}/run.json)")
    run = RunInfo(
        run_id=run_id,
        run_date=record["run_date"],
        labels=tuple(record.get("labels") or ("a", "b")),
        mode=record.get("mode", ""),
        model_id=record.get("model_id", ""),
        model_fingerprint=record.get("model_fingerprint", ""),
        code_version=record.get("code_version", ""),
    )
    return RunTables(output_uri, run)


def compact_run(output_uri: str, run_id: str, target_rows: int) -> dict[str, Any]:
    """Compact both tables of one run; returns what was merged."""
    tables = open_run(output_uri, run_id)
    journal = tables.read_record(JOURNAL) or {
        "conversation_keys": [],
        "emotion_conversations": 0,
        "error_conversations": 0,
        "next_seq": 0,
        "pending": None,
    }
    _recover(tables, journal)
    if tables.read_record("_SUCCESS") is None:
        log.warning("run %s has no _SUCCESS yet; compacting what is committed so far", run_id)
    summary: dict[str, Any] = {"run_id": run_id}
    for kind in (EMOTIONS, ERRORS):
        summary[kind] = _compact_table(tables, journal, kind, target_rows)
    return summary


def _recover(tables: RunTables, journal: dict[str, Any]) -> None:
    """Finish or undo a compaction that was interrupted."""
    pending = journal.get("pending")
    if not pending:
        return
    if pending["status"] == "written":
        _delete(pending["inputs"])
    else:  # planned: outputs may be partial or missing; inputs are intact
        _delete(pending["outputs"])
    journal["pending"] = None
    tables.write_record(JOURNAL, journal)


def _compact_table(
    tables: RunTables, journal: dict[str, Any], kind: str, target_rows: int
) -> dict[str, int]:
    prefix = f"{tables.run.run_id}--"
    inputs = [f for f in tables.run_files(kind) if COMPACT_MARK not in f]
    if not inputs:
        return {"inputs": 0, "outputs": 0, "rows": 0}
    groups = _group(inputs, target_rows)
    outputs = []
    for _ in groups:
        name = f"{tables.run.run_id}{COMPACT_MARK}{journal['next_seq']:05d}.parquet"
        outputs.append(join_uri(tables.partition_uri(kind), name))
        journal["next_seq"] += 1
    journal["pending"] = {"status": "planned", "kind": kind, "inputs": inputs, "outputs": outputs}
    tables.write_record(JOURNAL, journal)
    rows = 0
    for group, out in zip(groups, outputs, strict=True):
        rows += _merge(group, out)
    keys = [uri.rsplit("/", 1)[-1][len(prefix) : -len(".parquet")] for uri in inputs]
    journal["conversation_keys"] = sorted(set(journal["conversation_keys"]) | set(keys))
    counter = "emotion_conversations" if kind == EMOTIONS else "error_conversations"
    journal[counter] += len(inputs)
    journal["pending"]["status"] = "written"
    tables.write_record(JOURNAL, journal)
    _delete(inputs)
    journal["pending"] = None
    tables.write_record(JOURNAL, journal)
    log.info("%s: %d files -> %d (%d rows)", kind, len(inputs), len(outputs), rows)
    return {"inputs": len(inputs), "outputs": len(outputs), "rows": rows}


def _group(files: list[str], target_rows: int) -> list[list[str]]:
    """Consecutive files whose row counts (from the footers) add up to about target_rows."""
    groups: list[list[str]] = [[]]
    filled = 0
    for uri, n in zip(files, row_counts(files), strict=True):
        if groups[-1] and filled + n > target_rows:
            groups.append([])
            filled = 0
        groups[-1].append(uri)
        filled += n
    return groups


def _merge(files: list[str], out: str) -> int:
    parts = []
    metadata: dict[bytes, bytes] = {}
    for uri in files:
        fs, path = get_filesystem(uri)
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
        metadata = metadata or dict(table.schema.metadata or {})
        parts.append(table.replace_schema_metadata(None))
    merged = pa.concat_tables(parts)
    metadata[b"dpm.compacted_files"] = str(len(files)).encode()
    write_parquet_atomic(merged.replace_schema_metadata(metadata), out)
    return merged.num_rows


def _delete(uris: list[str]) -> None:
    for uri in uris:
        fs, path = get_filesystem(uri)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
