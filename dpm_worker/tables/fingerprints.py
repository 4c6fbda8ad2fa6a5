"""Conversation fingerprints for incremental (nightly) labeling runs.

A conversation's fingerprint is a hash of its manifest rows (the canonical columns, in dialogue
order) and of the identity of every recording they reference: size plus ETag (object stores)
or modification time (local files), from one metadata request per recording, never a download.
Same fingerprint, same model and same labeling config means the same labels, so an incremental
run skips it.

Each committed run keeps the fingerprints of the conversations it labeled in
``OUT/_runs/<run_id>/fingerprints.parquet`` (written just before ``_SUCCESS``), and its
``_SUCCESS`` record names the key they are valid for: the model fingerprint and the hash of the
labeling config. :func:`load_previous` merges the fingerprints of every committed run with the
same key, the latest run winning per conversation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dpm_worker.corpus import MANIFEST_SCHEMA, UtteranceRow
from dpm_worker.errors import StorageError
from dpm_worker.storage import get_filesystem, join_uri, list_names, read_json, redact
from dpm_worker.tables.writer import RUNS_DIR, SUCCESS_NAME, RunTables, write_parquet_atomic

FINGERPRINTS_NAME = "fingerprints.parquet"
KEY_RECORD = "fingerprint_key"  # the _SUCCESS field naming what the fingerprints are valid for
_DIGEST_CHARS = 32  # 128 bits: enough to tell versions of one conversation apart
# Which fsspec `info` field identifies a version of a file, best first: S3's ETag changes with
# the content (re-uploading the same bytes does not relabel); local files have only mtime.
_VERSION_FIELDS = ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified", "updated")
# The hashed manifest columns; pyarrow builds ``Schema.names`` anew on every access.
_CANONICAL_COLUMNS = tuple(MANIFEST_SCHEMA.names)

FINGERPRINTS_SCHEMA = pa.schema(
    [
        pa.field("conversation_id", pa.string(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class FingerprintKey:
    """What a set of fingerprints is valid for: the model and the labeling config.

    Args:
        model_fingerprint: the model's fingerprint (hash of weights and vocabulary).
        labeling_hash: :func:`labeling_hash` of the labeling config.
    """

    model_fingerprint: str
    labeling_hash: str

    def to_dict(self) -> dict[str, str]:
        return {"model_fingerprint": self.model_fingerprint, "labeling_hash": self.labeling_hash}


@dataclass
class PreviousFingerprints:
    """The merged fingerprints of earlier committed runs with the same key.

    Args:
        fingerprints: conversation id -> fingerprint of its latest committed labeling.
        runs: the run ids read, oldest first.
    """

    fingerprints: dict[str, str] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)

    def unchanged(self, conversation_id: str, fingerprint: str) -> bool:
        """True when the latest committed labeling of this conversation saw this fingerprint."""
        return self.fingerprints.get(conversation_id) == fingerprint


def labeling_hash(labeling: Mapping[str, Any]) -> str:
    """A stable hash of the labeling config (as plain JSON data; key order does not matter)."""
    text = json.dumps(labeling, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGEST_CHARS]


def recording_identity(info: Mapping[str, Any] | None) -> str:
    """A version string for one recording from its fsspec ``info`` (None: it does not exist)."""
    if info is None:
        return "missing"
    version = next((info[k] for k in _VERSION_FIELDS if info.get(k) is not None), None)
    return f"size={info.get('size')};version={version}"


def conversation_fingerprint(rows: Sequence[UtteranceRow], identities: Mapping[str, str]) -> str:
    """Hash of a conversation's canonical manifest rows and its recordings' identities.

    Args:
        rows: the conversation's rows (any order; they are hashed in dialogue order).
        identities: :func:`recording_identity` per ``audio_uri``.
    """
    digest = hashlib.sha256()
    ordered = sorted(rows, key=lambda r: (r.utterance_index is None, r.utterance_index or 0))
    for row in ordered:
        values = [getattr(row, name) for name in _CANONICAL_COLUMNS]
        values.append(identities.get(row.audio_uri, "missing") if row.audio_uri else None)
        digest.update(json.dumps(values, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:_DIGEST_CHARS]


def stat_recording(uri: str, endpoint_url: str | None = None) -> str:
    """:func:`recording_identity` of one recording (one metadata request; never raises)."""
    try:
        fs, path = get_filesystem(uri, endpoint_url)
        return recording_identity(fs.info(path))
    except FileNotFoundError:
        return recording_identity(None)
    except Exception as exc:  # noqa: BLE001 - the worker reports an unreadable recording
        # Never equal to a committed fingerprint, so the conversation is (re)tried.
        return f"unreadable:{type(exc).__name__}"


def fingerprint_conversations(
    conversations: Iterator[tuple[str, list[UtteranceRow]]],
    *,
    endpoint_url: str | None = None,
    workers: int = 8,
    chunk: int = 64,
) -> Iterator[tuple[str, list[UtteranceRow], str]]:
    """Add each conversation's fingerprint to a stream, in order.

    Recordings are looked up ``chunk`` conversations at a time on ``workers`` threads, since
    metadata requests to an object store are latency-bound; memory stays bounded by ``chunk``.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while batch := list(islice(conversations, chunk)):
            uris = sorted({r.audio_uri for _, rows in batch for r in rows if r.audio_uri})
            identities = dict(
                zip(uris, pool.map(lambda u: stat_recording(u, endpoint_url), uris), strict=True)
            )
            for conversation_id, rows in batch:
                yield conversation_id, rows, conversation_fingerprint(rows, identities)


def write_fingerprints(
    tables: RunTables, fingerprints: Mapping[str, str], key: FingerprintKey
) -> str:
    """Write a run's ``fingerprints.parquet`` (call before ``_SUCCESS``); returns its URI."""
    ids = sorted(fingerprints)
    table = pa.table(
        {"conversation_id": ids, "fingerprint": [fingerprints[i] for i in ids]},
        schema=FINGERPRINTS_SCHEMA,
    ).replace_schema_metadata({f"dpm.{k}": v for k, v in key.to_dict().items()})
    uri = tables.record_uri(FINGERPRINTS_NAME)
    write_parquet_atomic(table, uri, tables.endpoint_url)
    return uri


def load_previous(
    output_uri: str,
    key: FingerprintKey,
    *,
    exclude_run_id: str | None = None,
    endpoint_url: str | None = None,
) -> PreviousFingerprints:
    """Merge the fingerprints of every committed run under ``output_uri`` with ``key``.

    Runs without ``_SUCCESS`` (unfinished), with another model or labeling config, or from
    before fingerprints were kept are ignored; ``exclude_run_id`` (the run being resumed) too.
    Later runs (by ``_SUCCESS``'s ``finished_at``) override earlier ones per conversation.

    Raises:
        StorageError: the run records cannot be listed or read.
    """
    root = join_uri(output_uri, RUNS_DIR)
    run_ids = sorted(
        base
        for base in list_names(root, endpoint_url)
        if base != exclude_run_id and not base.startswith(".")
    )

    def read_one(run_id: str) -> tuple[str, str, pa.Table] | None:
        fp_uri = join_uri(root, run_id, FINGERPRINTS_NAME)
        record = read_json(join_uri(root, run_id, SUCCESS_NAME), endpoint_url)
        if record is None:
            return None  # not committed
        if record.get(KEY_RECORD) != key.to_dict():
            return None
        ffs, fpath = get_filesystem(fp_uri, endpoint_url)
        try:
            with ffs.open(fpath, "rb") as fh:
                table = pq.read_table(fh, columns=FINGERPRINTS_SCHEMA.names)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {redact(fp_uri)}: {exc}") from exc
        return str(record.get("finished_at", "")), run_id, table

    # Record reads are latency-bound on object stores: overlap them.
    with ThreadPoolExecutor(max_workers=16) as pool:
        found = [r for r in pool.map(read_one, run_ids) if r is not None]
    previous = PreviousFingerprints()
    for _, run_id, table in sorted(found, key=lambda r: (r[0], r[1])):
        previous.runs.append(run_id)
        previous.fingerprints.update(
            zip(
                table.column("conversation_id").to_pylist(),
                table.column("fingerprint").to_pylist(),
                strict=True,
            )
        )
    return previous
