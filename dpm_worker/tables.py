"""The output tables (DESIGN section 7): schema, per-conversation Parquet files, run records.

Layout under an output URI ``OUT``::

    OUT/emotions/run_date=YYYY-MM-DD/<run_id>--<key>.parquet   one file per labeled conversation
    OUT/errors/run_date=YYYY-MM-DD/<run_id>--<key>.parquet     one file per failed conversation
    OUT/_runs/<run_id>/run.json                                the run's config and run_date
    OUT/_runs/<run_id>/_SUCCESS                                JSON counts; the run is committed
    OUT/_runs/<run_id>/compaction.json                         what ``dpm compact`` merged
    OUT/_runs/<run_id>/fingerprints.parquet                    see ``dpm_worker.fingerprints``

``<key>`` is a hash of the conversation id, so an id like ``../../etc`` can never place a file
outside the output prefix, and a retried conversation overwrites its own file instead of
adding a second one. A file appears whole or not at all: locally it is written to a hidden
temporary name and renamed; on S3 it is one PUT of the finished bytes. A conversation is
committed once either of its two files exists; resuming a run skips committed conversations.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dpm_worker.errors import ConfigError, StorageError
from dpm_worker.storage import get_filesystem, is_remote, join_uri, list_names, redact

EMOTIONS, ERRORS = "emotions", "errors"
RUNS_DIR = "_runs"
SUCCESS_NAME = "_SUCCESS"
COMPACT_MARK = "--compact-"  # in the names of files merged by ``dpm compact``
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_KEY_CHARS = 32  # 128 bits of sha256: collisions are not a practical concern.
META_PREFIX = "dpm."

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("conversation_id", pa.string(), nullable=False),
        pa.field("utterance_index", pa.int32()),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("input_uri", pa.string()),
    ]
)


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is safe as a file-name prefix, else raise ConfigError."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or ".." in run_id:
        raise ConfigError(
            f"run id must be 1-128 characters of [A-Za-z0-9._-], starting with a letter or "
            f"digit, without '..'; got {run_id!r}"
        )
    return run_id


def new_run_id(now: dt.datetime | None = None) -> str:
    """A fresh run id: UTC time plus a random suffix, e.g. ``20261126T125300Z-3fa2c1``."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def conversation_key(conversation_id: str) -> str:
    """A file-name-safe, fixed-length key for a conversation id (hex of its sha256)."""
    return hashlib.sha256(conversation_id.encode("utf-8")).hexdigest()[:_KEY_CHARS]


def conversation_file_name(run_id: str, conversation_id: str) -> str:
    """The deterministic file name of one conversation's Parquet file in a run."""
    return f"{validate_run_id(run_id)}--{conversation_key(conversation_id)}.parquet"


def probability_column(label: str) -> str:
    """The column name holding the probability of ``label`` (``p_<label>``)."""
    safe = re.sub(r"[^0-9a-z_]", "_", label.lower())
    return f"p_{safe}"


def emotion_schema(labels: Sequence[str]) -> pa.Schema:
    """The emotion table's schema for a label set (one ``p_<label>`` column per label)."""
    prob_columns = [probability_column(label) for label in labels]
    if len(set(prob_columns)) != len(prob_columns):
        raise ConfigError(f"labels {list(labels)!r} map to duplicate columns {prob_columns!r}")
    return pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("conversation_id", pa.string(), nullable=False),
            pa.field("utterance_index", pa.int32(), nullable=False),
            pa.field("speaker", pa.string(), nullable=False),
            pa.field("start_s", pa.float64()),
            pa.field("end_s", pa.float64()),
            pa.field("emotion", pa.dictionary(pa.int32(), pa.string()), nullable=False),
            pa.field("confidence", pa.float32(), nullable=False),
            *[pa.field(name, pa.float32(), nullable=False) for name in prob_columns],
            pa.field("gold_emotion", pa.string()),
            pa.field("mode", pa.string(), nullable=False),
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("labeled_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
    )


@dataclass(frozen=True)
class RunInfo:
    """What every file of a run shares: identity, label set and footer metadata.

    Args:
        run_id: the run's id (validated as a safe file-name prefix).
        run_date: ``YYYY-MM-DD``, the Hive partition; fixed when the run starts so that a
            resumed run writes into the same partition.
        labels: the model's emotion label set, in the order of its emotion tokens.
        mode: the labeling mode (``dpm``, ``window``, ...).
        model_id: a readable model name.
        model_fingerprint: a hash of the model's weights and vocabulary.
        code_version: the package version (and git commit when known).
        config: the run's configuration (JSON-serializable; credentials must not be in it).
    """

    run_id: str
    run_date: str
    labels: tuple[str, ...]
    mode: str
    model_id: str
    model_fingerprint: str
    code_version: str
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_run_id(self.run_id)
        try:
            dt.date.fromisoformat(self.run_date)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"run_date must be YYYY-MM-DD, got {self.run_date!r}") from exc
        object.__setattr__(self, "labels", tuple(self.labels))
        emotion_schema(self.labels)  # validates the label set's column names
        try:
            json.dumps(self.config)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"run config must be JSON-serializable: {exc}") from exc

    def footer_metadata(self) -> dict[bytes, bytes]:
        """Parquet key-value metadata: run config, label set, model fingerprint, code version."""
        values = {
            "run_id": self.run_id,
            "run_date": self.run_date,
            "labels": json.dumps(list(self.labels)),
            "mode": self.mode,
            "model_id": self.model_id,
            "model_fingerprint": self.model_fingerprint,
            "code_version": self.code_version,
            "run_config": json.dumps(self.config, sort_keys=True),
        }
        return {f"{META_PREFIX}{k}".encode(): redact(v).encode() for k, v in values.items()}


@dataclass(frozen=True)
class LabeledUtterance:
    """One row of the emotion table before the run-level columns are added."""

    utterance_index: int
    speaker: str
    start_s: float | None
    end_s: float | None
    emotion: str
    confidence: float
    probs: tuple[float, ...]
    gold_emotion: str | None = None


@dataclass(frozen=True)
class ErrorRecord:
    """One row of the errors table before the run id is added."""

    conversation_id: str
    utterance_index: int | None
    error_type: str
    message: str
    input_uri: str | None = None


def build_emotion_table(
    run: RunInfo,
    conversation_id: str,
    utterances: Sequence[LabeledUtterance],
    labeled_at: dt.datetime,
) -> pa.Table:
    """Assemble one conversation's emotion rows as a table with the run's schema."""
    schema = emotion_schema(run.labels)
    for utt in utterances:
        if len(utt.probs) != len(run.labels):
            raise ConfigError(
                f"utterance {utt.utterance_index} of {conversation_id!r} has {len(utt.probs)} "
                f"probabilities for {len(run.labels)} labels"
            )
    n = len(utterances)
    when = labeled_at.astimezone(dt.UTC)
    columns: dict[str, pa.Array] = {
        "run_id": pa.array([run.run_id] * n, pa.string()),
        "conversation_id": pa.array([conversation_id] * n, pa.string()),
        "utterance_index": pa.array([u.utterance_index for u in utterances], pa.int32()),
        "speaker": pa.array([u.speaker for u in utterances], pa.string()),
        "start_s": pa.array([u.start_s for u in utterances], pa.float64()),
        "end_s": pa.array([u.end_s for u in utterances], pa.float64()),
        # A fixed dictionary (the label set) keeps every file's dictionary identical.
        "emotion": pa.DictionaryArray.from_arrays(
            pa.array([run.labels.index(u.emotion) for u in utterances], pa.int32()),
            pa.array(run.labels, pa.string()),
        ),
        "confidence": pa.array([u.confidence for u in utterances], pa.float32()),
    }
    for j, label in enumerate(run.labels):
        columns[probability_column(label)] = pa.array(
            [u.probs[j] for u in utterances], pa.float32()
        )
    columns["gold_emotion"] = pa.array([u.gold_emotion for u in utterances], pa.string())
    columns["mode"] = pa.array([run.mode] * n, pa.string())
    columns["model_id"] = pa.array([run.model_id] * n, pa.string())
    columns["labeled_at"] = pa.array([when] * n, pa.timestamp("us", tz="UTC"))
    table = pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)
    return table.replace_schema_metadata(run.footer_metadata())


def build_error_table(run: RunInfo, errors: Sequence[ErrorRecord]) -> pa.Table:
    """Assemble error rows (messages redacted of credentials) with the errors schema."""
    table = pa.Table.from_pylist(
        [
            {
                "run_id": run.run_id,
                "conversation_id": e.conversation_id,
                "utterance_index": e.utterance_index,
                "error_type": e.error_type,
                "message": redact(e.message),
                "input_uri": e.input_uri,
            }
            for e in errors
        ],
        schema=ERRORS_SCHEMA,
    )
    return table.replace_schema_metadata(run.footer_metadata())


def write_parquet_atomic(table: pa.Table, uri: str, endpoint_url: str | None = None) -> None:
    """Write ``table`` to ``uri`` so that the file appears whole or not at all.

    Local paths: a hidden temporary file in the same folder, fsync, then ``os.replace``.
    Object stores: the finished bytes in one PUT (an object is visible only once complete).
    """
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    fs, path = get_filesystem(uri, endpoint_url)
    try:
        if is_remote(uri):
            fs.pipe_file(path, data)
            return
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        # Hidden and not ending in .parquet, so no reader's glob ever picks up a partial file.
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise StorageError(f"cannot write {redact(uri)}: {redact(str(exc))}") from exc


class RunTables:
    """The tables and records of one run under an output URI.

    Args:
        output_uri: the output prefix (local folder or ``s3://bucket/prefix``).
        run: the run's shared identity and metadata.
        endpoint_url: an explicit S3 endpoint (else the environment's).
    """

    def __init__(self, output_uri: str, run: RunInfo, endpoint_url: str | None = None) -> None:
        self.output_uri = output_uri.rstrip("/") if is_remote(output_uri) else output_uri
        self.run = run
        self.endpoint_url = endpoint_url

    def table_uri(self, kind: str) -> str:
        """The root of the emotions or errors table."""
        return join_uri(self.output_uri, kind)

    def partition_uri(self, kind: str) -> str:
        """This run's Hive partition folder in the emotions or errors table."""
        return join_uri(self.output_uri, kind, f"run_date={self.run.run_date}")

    def file_uri(self, kind: str, conversation_id: str) -> str:
        """The deterministic URI of one conversation's file."""
        return join_uri(
            self.partition_uri(kind), conversation_file_name(self.run.run_id, conversation_id)
        )

    def record_uri(self, name: str) -> str:
        """A run record such as ``run.json``, ``_SUCCESS`` or ``compaction.json``."""
        return join_uri(self.output_uri, RUNS_DIR, self.run.run_id, name)

    def write_emotions(
        self,
        conversation_id: str,
        utterances: Sequence[LabeledUtterance],
        labeled_at: dt.datetime | None = None,
    ) -> str:
        """Commit one labeled conversation; returns the file's URI."""
        table = build_emotion_table(
            self.run, conversation_id, utterances, labeled_at or dt.datetime.now(dt.UTC)
        )
        uri = self.file_uri(EMOTIONS, conversation_id)
        write_parquet_atomic(table, uri, self.endpoint_url)
        return uri

    def write_errors(self, conversation_id: str, errors: Sequence[ErrorRecord]) -> str:
        """Commit one failed conversation's error rows; returns the file's URI."""
        uri = self.file_uri(ERRORS, conversation_id)
        write_parquet_atomic(build_error_table(self.run, errors), uri, self.endpoint_url)
        return uri

    def run_files(self, kind: str) -> list[str]:
        """URIs of this run's files in one table's partition (per-conversation and compacted)."""
        prefix = f"{self.run.run_id}--"
        files = []
        for base in list_names(self.partition_uri(kind), self.endpoint_url):
            if base.startswith(prefix) and base.endswith(".parquet"):
                files.append(join_uri(self.partition_uri(kind), base))
        return sorted(files)

    def committed_keys(self) -> set[str]:
        """Keys (see ``conversation_key``) of every conversation this run has committed."""
        keys: set[str] = set()
        prefix = f"{self.run.run_id}--"
        for kind in (EMOTIONS, ERRORS):
            for uri in self.run_files(kind):
                stem = uri.rsplit("/", 1)[-1][len(prefix) : -len(".parquet")]
                if len(stem) == _KEY_CHARS:
                    keys.add(stem)
        journal = self.read_record("compaction.json")
        if journal:
            keys.update(journal.get("conversation_keys", []))
        return keys

    def write_record(self, name: str, record: dict[str, Any]) -> None:
        """Write a JSON run record (atomically, as the Parquet files)."""
        data = json.dumps(record, indent=2, sort_keys=True, default=str).encode()
        uri = self.record_uri(name)
        fs, path = get_filesystem(uri, self.endpoint_url)
        try:
            if is_remote(uri):
                fs.pipe_file(path, redact(data.decode()).encode())
                return
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(redact(data.decode()).encode())
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"cannot write {redact(uri)}: {redact(str(exc))}") from exc

    def read_record(self, name: str) -> dict[str, Any] | None:
        """Read a JSON run record, or None when it does not exist."""
        uri = self.record_uri(name)
        fs, path = get_filesystem(uri, self.endpoint_url)
        try:
            fs.invalidate_cache()
            if not fs.exists(path):
                return None
            return json.loads(fs.cat_file(path))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {redact(uri)}: {redact(str(exc))}") from exc

    def count_rows(self, kind: str) -> int:
        """Rows in this run's files of one table (reads only the Parquet footers)."""

        def rows(uri: str) -> int:
            fs, path = get_filesystem(uri, self.endpoint_url)
            with fs.open(path, "rb") as fh:
                return int(pq.ParquetFile(fh).metadata.num_rows)

        # Footer reads are latency-bound on object stores: overlap them.
        with ThreadPoolExecutor(max_workers=16) as pool:
            return sum(pool.map(rows, self.run_files(kind)))


def check_writable(output_uri: str, endpoint_url: str | None = None) -> None:
    """Fail fast (StorageError) when ``output_uri`` cannot be written: write and delete a probe."""
    probe = join_uri(output_uri, RUNS_DIR, f".probe-{uuid.uuid4().hex}")
    try:
        fs, path = get_filesystem(probe, endpoint_url)
        if not is_remote(probe):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        fs.pipe_file(path, b"ok")
        fs.rm_file(path)
    except (OSError, ValueError) as exc:
        raise StorageError(
            f"output location {redact(output_uri)} is not writable: {redact(str(exc))}"
        ) from exc
    except Exception as exc:  # botocore/aiohttp errors that are not OSError
        raise StorageError(
            f"output location {redact(output_uri)} is not reachable: "
            f"{type(exc).__name__}: {redact(str(exc))}"
        ) from exc


def read_run_table(output_uri: str, kind: str, endpoint_url: str | None = None) -> pa.Table:
    """Read a whole emotions or errors table (all runs, ``run_date`` as a column)."""
    import pyarrow.dataset as ds

    root = join_uri(output_uri, kind)
    fs, path = get_filesystem(root, endpoint_url)
    fs.invalidate_cache()
    if not fs.exists(path):
        return (ERRORS_SCHEMA if kind == ERRORS else pa.schema([])).empty_table()
    dataset = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    return dataset.to_table()


def decode_metadata(metadata: dict[bytes, bytes] | None) -> dict[str, Any]:
    """The ``dpm.*`` footer metadata of a Parquet file as a plain dict (JSON values decoded)."""
    out: dict[str, Any] = {}
    for key, value in (metadata or {}).items():
        name = key.decode()
        if not name.startswith(META_PREFIX):
            continue
        name = name[len(META_PREFIX) :]
        text = value.decode()
        out[name] = json.loads(text) if name in ("labels", "run_config") else text
    return out
