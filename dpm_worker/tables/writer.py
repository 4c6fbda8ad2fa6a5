"""The output tables (DESIGN section 7): layout, per-conversation Parquet files, run records.

Layout under an output URI ``OUT``::

    OUT/emotions/run_date=YYYY-MM-DD/<run_id>--<key>.parquet   one file per labeled conversation
    OUT/errors/run_date=YYYY-MM-DD/<run_id>--<key>.parquet     one file per failed conversation
    OUT/_runs/<run_id>/run.json                                the run's config and run_date
    OUT/_runs/<run_id>/_SUCCESS                                JSON counts; the run is committed
    OUT/_runs/<run_id>/compaction.json                         what ``dpm compact`` merged
    OUT/_runs/<run_id>/fingerprints.parquet                    see ``dpm_worker.tables.fingerprints``
    OUT/_runs/<run_id>/checkpoints/<key>/                      see ``dpm_worker.tables.checkpoints``

``<key>`` is a hash of the conversation id, so an id like ``../../etc`` can never place a file
outside the output prefix, and a retried conversation never adds a second file. A file appears whole or not at all: locally it is written to a hidden
temporary name of its own and then linked into place; on S3 it is one PUT of the finished
bytes. A conversation's file is written exclusively (a hard link locally, ``If-None-Match: *``
on S3): the first complete write commits it and a late writer (a timed-out actor that was
killed while still writing, or a retry) changes nothing. A conversation is committed once
either of its two files exists; resuming a run skips committed conversations.
A conversation labeled except for some utterances has both: its error rows in
``<run_id>--<key>--partial.parquet``, written first, then its emotions file, which commits it
(a partial errors file alone does not, so a crash between the two relabels the conversation).
The schemas, ``RunInfo`` and the row builders are in ``dpm_worker.tables.schema``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dpm_worker.errors import StorageError
from dpm_worker.storage import get_filesystem, is_remote, join_uri, list_names, redact
from dpm_worker.tables.schema import (
    ERRORS_SCHEMA,
    ErrorRecord,
    RunInfo,
    build_emotion_table,
    build_error_table,
    validate_run_id,
)
from dpm_worker.utterance import LabeledUtterance

EMOTIONS, ERRORS = "emotions", "errors"
RUNS_DIR = "_runs"
SUCCESS_NAME = "_SUCCESS"
COMPACT_MARK = "--compact-"  # in the names of files merged by ``dpm compact``
PARTIAL_MARK = "--partial"  # the errors file of a conversation that also has emotion rows
_KEY_CHARS = 32  # 128 bits of sha256: collisions are not a practical concern.


def conversation_key(conversation_id: str) -> str:
    """A file-name-safe, fixed-length key for a conversation id (hex of its sha256)."""
    return hashlib.sha256(conversation_id.encode("utf-8")).hexdigest()[:_KEY_CHARS]


def conversation_file_name(run_id: str, conversation_id: str) -> str:
    """The deterministic file name of one conversation's Parquet file in a run."""
    return f"{validate_run_id(run_id)}--{conversation_key(conversation_id)}.parquet"


def write_parquet_atomic(
    table: pa.Table, uri: str, endpoint_url: str | None = None, exclusive: bool = False
) -> bool:
    """Write ``table`` to ``uri`` so that the file appears whole or not at all.

    See :func:`write_bytes_atomic`; returns False when ``exclusive`` found the file there.
    """
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return write_bytes_atomic(sink.getvalue().to_pybytes(), uri, endpoint_url, exclusive)


def write_bytes_atomic(
    data: bytes, uri: str, endpoint_url: str | None = None, exclusive: bool = False
) -> bool:
    """Write ``data`` to ``uri`` so that the object appears whole or not at all.

    The write behind the Parquet files, the JSON run records and the checkpoints. Locally a
    hidden temporary file of a unique name, fsync, then one atomic step (rename, or a hard
    link when exclusive); on S3 one PUT (conditional, ``If-None-Match: *``, when exclusive).

    Args:
        data: the bytes.
        uri: where they go.
        endpoint_url: an explicit S3 endpoint (else the environment's).
        exclusive: write only if nothing is there yet: the first complete write wins and a
            late writer (a killed actor that is still writing) can never replace it.

    Returns:
        True when written; False when ``exclusive`` found the object already there.
    """
    fs, path = get_filesystem(uri, endpoint_url)
    try:
        if is_remote(uri):
            return _put(fs, path, data, exclusive and uri.startswith(("s3://", "s3a://")))
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        # Hidden and not ending in .parquet, so no reader's glob ever picks up a partial file.
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if not exclusive:
                os.replace(tmp, path)
                return True
            try:
                os.link(tmp, path)  # atomic and fails if the name exists: no overwrite
            except FileExistsError:
                return False
            return True
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise StorageError(f"cannot write {redact(uri)}: {redact(str(exc))}") from exc


def _put(fs: Any, path: str, data: bytes, conditional: bool) -> bool:
    """One PUT; ``conditional``: only if the key does not exist (S3 conditional writes)."""
    if not conditional:
        fs.pipe_file(path, data)
        return True
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:  # s3fs's translation of 412 PreconditionFailed (If-None-Match)
        return False
    return True


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
        write_parquet_atomic(table, uri, self.endpoint_url, exclusive=True)
        return uri

    def write_errors(
        self, conversation_id: str, errors: Sequence[ErrorRecord], *, partial: bool = False
    ) -> str:
        """Write one conversation's error rows; returns the file's URI.

        Args:
            conversation_id: the conversation.
            errors: its error rows.
            partial: the conversation's other utterances are labeled: the file does not
                commit the conversation (its emotions file, written after it, does).
        """
        uri = self.file_uri(ERRORS, conversation_id)
        if partial:
            uri = uri[: -len(".parquet")] + PARTIAL_MARK + ".parquet"
        write_parquet_atomic(
            build_error_table(self.run, errors), uri, self.endpoint_url, exclusive=True
        )
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
        """Write a JSON run record (atomically, as the Parquet files).

        The record is stored as given, never redacted: a resumed run compares it with its own
        arguments, and a credential value that happens to occur in a bucket name or run id
        (MinIO's ``minioadmin``) would otherwise make the same arguments look different.
        Redaction belongs to what is printed or logged.
        """
        text = json.dumps(record, indent=2, sort_keys=True, default=str)
        write_bytes_atomic(text.encode(), self.record_uri(name), self.endpoint_url)

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
        return sum(row_counts(self.run_files(kind), self.endpoint_url))


def row_counts(uris: Sequence[str], endpoint_url: str | None = None) -> list[int]:
    """The row count of each Parquet file, in order, read from its footer alone."""

    def rows(uri: str) -> int:
        fs, path = get_filesystem(uri, endpoint_url)
        with fs.open(path, "rb") as fh:
            return int(pq.ParquetFile(fh).metadata.num_rows)

    # Footer reads are latency-bound on object stores: overlap them.
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(rows, uris))


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
