"""Read one labeling run back from its tables: emotion rows, error rows and run records.

The reader side of the contract in ``tables.py`` (DESIGN section 7), for reports and for anyone
who wants one run as pandas frames. Only the run's own files are opened: its ``run_date``
partition (from ``_runs/<run_id>/run.json``) and, in it, the files named ``<run_id>--*``; rows
are filtered by ``run_id`` as well, so a file copied in from elsewhere cannot leak in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dpm_worker.errors import BadInputError, StorageError
from dpm_worker.storage import get_filesystem, join_uri, list_names, read_json, redact
from dpm_worker.tables.schema import probability_column
from dpm_worker.tables.writer import EMOTIONS, ERRORS, RUNS_DIR, SUCCESS_NAME

_FETCH_BATCH = 256  # files fetched per batched request


@dataclass(frozen=True)
class RunResults:
    """One run's rows and records.

    Args:
        run_id: the run's id.
        output_uri: the output prefix the run wrote under.
        emotions: the run's emotion rows (``emotion`` as plain strings), ordered by
            conversation and utterance index.
        errors: the run's error rows (empty frame with the columns when there are none).
        labels: the model's label set, in the order of its emotion tokens.
        run_record: ``run.json`` (config, model, run_date), or {} when missing.
        success: the ``_SUCCESS`` record with counts, or None when the run is not committed.
    """

    run_id: str
    output_uri: str
    emotions: pd.DataFrame
    errors: pd.DataFrame
    labels: tuple[str, ...]
    run_record: dict[str, Any] = field(default_factory=dict)
    success: dict[str, Any] | None = None

    @property
    def has_gold(self) -> bool:
        """True when at least one emotion row carries a gold label."""
        return "gold_emotion" in self.emotions and bool(self.emotions["gold_emotion"].notna().any())


def split_run_uri(uri: str) -> tuple[str, str | None]:
    """``OUT/_runs/RUN_ID`` -> (``OUT``, ``RUN_ID``); any other URI -> (uri, None)."""
    trimmed = uri.rstrip("/")
    head, _, run_id = trimmed.rpartition("/")
    parent, _, runs = head.rpartition("/")
    if runs == RUNS_DIR and run_id and parent:
        return parent, run_id
    return uri, None


def list_runs(output_uri: str, endpoint_url: str | None = None) -> list[dict[str, Any]]:
    """The runs recorded under ``output_uri``: run id, committed, finished_at (oldest first)."""
    runs = []
    for run_id in list_names(join_uri(output_uri, RUNS_DIR), endpoint_url):
        if run_id.startswith("."):
            continue  # write probes and temporary files
        success = read_json(join_uri(output_uri, RUNS_DIR, run_id, SUCCESS_NAME), endpoint_url)
        runs.append(
            {
                "run_id": run_id,
                "committed": success is not None,
                "finished_at": (success or {}).get("finished_at"),
            }
        )
    return sorted(runs, key=lambda r: (r["finished_at"] or "", r["run_id"]))


def latest_committed_run(output_uri: str, endpoint_url: str | None = None) -> str:
    """The id of the run that committed last under ``output_uri``.

    Raises:
        BadInputError: no run under ``output_uri`` has committed.
    """
    committed = [r for r in list_runs(output_uri, endpoint_url) if r["committed"]]
    if not committed:
        raise BadInputError("no committed run (no _runs/*/_SUCCESS) under", redact(output_uri))
    return committed[-1]["run_id"]


def read_run(output_uri: str, run_id: str, endpoint_url: str | None = None) -> RunResults:
    """Read the emotion and error rows and the records of one run.

    Raises:
        BadInputError: the run has neither a ``run.json`` record nor any emotion or error file.
    """
    record = read_json(join_uri(output_uri, RUNS_DIR, run_id, "run.json"), endpoint_url) or {}
    success = read_json(join_uri(output_uri, RUNS_DIR, run_id, SUCCESS_NAME), endpoint_url)
    run_date = record.get("run_date") or (success or {}).get("run_date")
    emotions = _read_rows(output_uri, EMOTIONS, run_id, run_date, endpoint_url)
    errors = _read_rows(output_uri, ERRORS, run_id, run_date, endpoint_url)
    if not record and emotions is None and errors is None:
        raise BadInputError(f"no run {run_id!r} (no run.json, no table files) under", output_uri)
    labels = tuple(record.get("labels") or _labels_from_columns(emotions))
    emotions_df = _emotion_frame(emotions, labels)
    errors_df = (
        errors.to_pandas()
        if errors is not None
        else pd.DataFrame(columns=["run_id", "conversation_id", "utterance_index", "error_type"])
    )
    return RunResults(run_id, output_uri, emotions_df, errors_df, labels, record, success)


def _read_rows(
    output_uri: str, kind: str, run_id: str, run_date: str | None, endpoint_url: str | None
) -> pa.Table | None:
    """This run's rows of one table, or None when it has no files there."""
    table_uri = join_uri(output_uri, kind)
    fs, root = get_filesystem(table_uri, endpoint_url)
    # Without run.json the partition is unknown: look in all of them.
    partition = f"run_date={run_date}" if run_date else "run_date=*"
    try:
        fs.invalidate_cache()
        paths = sorted(fs.glob(f"{root.rstrip('/')}/{partition}/{run_id}--*.parquet"))
    except OSError as exc:
        raise StorageError(f"cannot list {redact(table_uri)}: {redact(str(exc))}") from exc
    if not paths:
        return None
    tables: list[pa.Table] = []
    for start in range(0, len(paths), _FETCH_BATCH):
        # One batched fetch per chunk: s3fs issues the GETs concurrently (a run has one file
        # per conversation, thousands on S3), and the chunking bounds the bytes held at once.
        try:
            batch = fs.cat(paths[start : start + _FETCH_BATCH], on_error="raise")
        except OSError as exc:
            raise StorageError(f"cannot read {redact(table_uri)}: {redact(str(exc))}") from exc
        tables.extend(_as_plain_table(pq.read_table(pa.BufferReader(batch[p]))) for p in batch)
    table = pa.concat_tables(tables, promote_options="default")
    mask = pc.equal(table["run_id"], run_id)
    return table.filter(mask)


def _as_plain_table(table: pa.Table) -> pa.Table:
    """Emotion as plain strings (per-file dictionaries may differ), footer metadata dropped."""
    if "emotion" in table.column_names and pa.types.is_dictionary(table["emotion"].type):
        table = table.set_column(
            table.column_names.index("emotion"), "emotion", table["emotion"].cast(pa.string())
        )
    return table.replace_schema_metadata(None)


def _labels_from_columns(table: pa.Table | None) -> list[str]:
    if table is None:
        return []
    return [name[2:] for name in table.column_names if name.startswith("p_")]


def _emotion_frame(table: pa.Table | None, labels: tuple[str, ...]) -> pd.DataFrame:
    if table is None:
        columns = ["run_id", "conversation_id", "utterance_index", "speaker", "emotion"]
        columns += ["confidence", *(probability_column(label) for label in labels)]
        return pd.DataFrame(columns=[*columns, "gold_emotion"])
    frame = table.to_pandas()
    # A retried or compacted conversation must not count twice in a report.
    frame = frame.drop_duplicates(["conversation_id", "utterance_index"], keep="last")
    return frame.sort_values(["conversation_id", "utterance_index"]).reset_index(drop=True)
