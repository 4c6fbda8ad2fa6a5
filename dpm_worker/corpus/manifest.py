"""Read and stream canonical manifests (DESIGN section 7).

A manifest is Parquet, JSON Lines or CSV (chosen by extension), or a folder holding
``manifest.parquet``; local or ``s3://``. :func:`read_manifest` loads and strictly validates a
whole manifest; :func:`iter_conversations` streams it conversation by conversation with bounded
memory for the labeling job, which checks each conversation with
:func:`conversation_problems` and fails fast only on manifest-level problems. The checks live in
:mod:`dpm_worker.corpus.manifest_checks`, opening, batch reading and writing the files in
:mod:`dpm_worker.corpus.manifest_files`; both are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from dpm_worker.corpus.manifest_checks import (
    cast_manifest,
    check_columns,
    validate_manifest,
)
from dpm_worker.corpus.manifest_files import (
    DEFAULT_BATCH_ROWS,
    ManifestSource,
)
from dpm_worker.corpus.schema import MANIFEST_SCHEMA, UtteranceRow
from dpm_worker.errors import ManifestError
from dpm_worker.storage import resolve_relative

# --------------------------------------------------------------------------- reading


def resolve_audio(table: pa.Table, base_dir: str) -> pa.Table:
    """``audio_uri`` and ``rttm_uri`` made absolute against the manifest's folder ``base_dir``
    (nulls kept)."""
    for name in ("audio_uri", "rttm_uri"):
        position = table.schema.get_field_index(name)
        if position < 0:
            continue
        # Many rows share one recording: resolve each distinct value once.
        cache: dict[str, str] = {}
        resolved = [
            None
            if uri is None
            else cache.get(uri) or cache.setdefault(uri, resolve_relative(uri, base_dir))
            for uri in table.column(position).to_pylist()
        ]
        field = table.schema.field(position)
        table = table.set_column(position, field, pa.array(resolved, pa.string()))
    return table


def read_manifest(
    uri: str, *, endpoint_url: str | None = None, labels: Sequence[str] | None = None
) -> pa.Table:
    """Read and strictly validate a whole manifest.

    Args:
        uri: a ``.parquet``/``.pq``, ``.jsonl``/``.json``/``.ndjson`` or ``.csv`` file, or a
            folder holding ``manifest.parquet``; a local path or an ``s3://`` URI.
        endpoint_url: an explicit S3 endpoint.
        labels: the allowed gold emotion labels; None skips the check.

    Returns:
        The table cast to MANIFEST_SCHEMA (extra columns after the canonical ones), with
        ``audio_uri`` absolute (relative paths resolve against the manifest's folder), sorted
        by ``(conversation_id, utterance_index)``.

    Raises:
        ManifestError: unreadable file, missing column, or a bad row (row and column named).
    """
    source = ManifestSource(uri, endpoint_url)
    table = validate_manifest(source.read(), source.uri, labels)
    table = resolve_audio(table, source.base_dir)
    return table.sort_by([("conversation_id", "ascending"), ("utterance_index", "ascending")])


def to_rows(table: pa.Table) -> list[UtteranceRow]:
    """Turn a cast manifest table into :class:`UtteranceRow` objects (extras in ``extra``)."""
    canonical = set(MANIFEST_SCHEMA.names)
    rows = []
    for record in table.to_pylist():
        extra = {k: v for k, v in record.items() if k not in canonical}
        rows.append(UtteranceRow(**{k: record.get(k) for k in MANIFEST_SCHEMA.names}, extra=extra))
    return rows


def iter_conversations(
    uri: str, *, endpoint_url: str | None = None, batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[tuple[str, list[UtteranceRow]]]:
    """Stream a manifest conversation by conversation with bounded memory.

    Two passes over the file in batches: the first reads the canonical columns only to
    count each conversation's rows and to fail fast on manifest-level problems (missing
    columns, uncastable values); the second emits a conversation as soon as all its rows have
    been seen. Memory is therefore bounded by how much conversations interleave in the file,
    not by the corpus size. Row-level problems are not raised here: check each conversation
    with :func:`conversation_problems`.

    Args:
        uri: the manifest (see :func:`read_manifest`).
        endpoint_url: an explicit S3 endpoint.
        batch_rows: rows per scanned batch.

    Yields:
        ``(conversation_id, rows)`` with rows in dialogue order (``utterance_index``) and
        ``audio_uri`` absolute. A null conversation_id is reported under ``""``. Rows of an
        invalid conversation may hold None in required fields: check them with
        :func:`conversation_problems` before use.

    Raises:
        ManifestError: the manifest is unreadable, misses a column or has uncastable values.
    """
    source = ManifestSource(uri, endpoint_url)
    uri = source.uri
    check_columns(source.column_names(), uri)

    counts: dict[str, int] = {}
    offset = 0
    for raw in source.tables(list(MANIFEST_SCHEMA.names), batch_rows):
        table = cast_manifest(raw, uri, row_offset=offset)
        offset += raw.num_rows
        for item in pc.value_counts(table["conversation_id"]):
            key = item["values"].as_py() or ""
            counts[key] = counts.get(key, 0) + item["counts"].as_py()

    pending: dict[str, list[UtteranceRow]] = {}
    offset = 0
    for raw in source.tables(None, batch_rows):
        table = cast_manifest(raw, uri, row_offset=offset)
        offset += raw.num_rows
        for row in to_rows(resolve_audio(table, source.base_dir)):
            key = row.conversation_id or ""
            bucket = pending.setdefault(key, [])
            bucket.append(row)
            if len(bucket) == counts.get(key, -1):
                del pending[key]
                bucket.sort(key=_dialogue_order)
                yield key, bucket
    if pending:
        raise ManifestError(
            f"manifest changed while it was read: {len(pending)} conversation(s) incomplete",
            uri,
        )


def _dialogue_order(row: UtteranceRow) -> tuple[bool, int]:
    return (row.utterance_index is None, row.utterance_index or 0)
