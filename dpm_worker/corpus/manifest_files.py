"""Manifest files: formats, opening, batch reading, row counts, writing and fingerprints.

A manifest is Parquet, JSON Lines or CSV (chosen by extension), or a folder holding
``manifest.parquet``; local or ``s3://``. :class:`ManifestSource` opens one and reads it as raw
(uncast) tables in file order; casting, validation and conversations are
:mod:`dpm_worker.corpus.manifest`'s.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from dpm_worker.corpus.schema import MANIFEST_SCHEMA
from dpm_worker.errors import ManifestError
from dpm_worker.storage import get_filesystem, is_remote, parent_uri

MANIFEST_FILENAME = "manifest.parquet"
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "json", ".json": "json"}
_FORMATS |= {".ndjson": "json", ".csv": "csv"}
DEFAULT_BATCH_ROWS = 65536


# ---------------------------------------------------------------------------- opening


def _manifest_path(
    uri: str, endpoint_url: str | None
) -> tuple[fsspec.AbstractFileSystem, str, str, str]:
    """Resolve ``uri`` to ``(filesystem, path, format, manifest_uri)``; raise if unusable."""
    try:
        fs, path = get_filesystem(uri, endpoint_url)
        if fs.isdir(path):
            uri = uri.rstrip("/") + "/" + MANIFEST_FILENAME
            path = path.rstrip("/") + "/" + MANIFEST_FILENAME
        exists = fs.exists(path)
    except ManifestError:
        raise
    except Exception as exc:  # noqa: BLE001 - any storage failure is an unreadable manifest
        raise ManifestError(f"cannot open manifest: {exc}", uri) from exc
    if not exists:
        raise ManifestError("manifest not found", uri)
    ext = posixpath.splitext(path)[1].lower()
    fmt = _FORMATS.get(ext)
    if fmt is None:
        raise ManifestError(
            f"unsupported manifest extension {ext!r}; expected one of {sorted(_FORMATS)} "
            f"or a folder holding {MANIFEST_FILENAME}",
            uri,
        )
    try:
        size = fs.size(path)
        if not size:
            raise ManifestError("manifest file is empty", uri)
        if fmt == "json":
            with fs.open(path, "rb") as fh:
                head = fh.read(256).lstrip()
            if head.startswith(b"["):
                raise ManifestError(
                    "JSON manifests must be JSON Lines (one object per line), not one array", uri
                )
    except ManifestError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ManifestError(f"cannot read manifest: {exc}", uri) from exc
    return fs, path, fmt, uri


class ManifestSource:
    """One manifest file opened for reading in batches, in file order.

    Parquet and CSV go through ``pyarrow.dataset`` scans. CSV reads every canonical column as
    text and leaves the conversion to :func:`cast_manifest`, so a bad value is reported with its
    row, and a column that is empty in the first block cannot break later blocks. JSON Lines
    are parsed line by line for the same reason (pyarrow's JSON reader fixes each column's type
    from the first block and fails when a null column later holds strings).

    Args:
        uri: the manifest file or a folder holding ``manifest.parquet``.
        endpoint_url: an explicit S3 endpoint.

    Raises:
        ManifestError: missing, empty, unsupported or unreadable file.
    """

    def __init__(self, uri: str, endpoint_url: str | None = None) -> None:
        self.fs, self.path, self.format, self.uri = _manifest_path(uri, endpoint_url)
        self._dataset: ds.Dataset | None = None
        if self.format == "json":
            return
        file_format: ds.FileFormat
        if self.format == "csv":
            convert = pa_csv.ConvertOptions(
                column_types={name: pa.string() for name in MANIFEST_SCHEMA.names},
                strings_can_be_null=True,
            )
            file_format = ds.CsvFileFormat(convert_options=convert)
        else:
            file_format = ds.ParquetFileFormat()
        try:
            self._dataset = ds.dataset(self.path, format=file_format, filesystem=self.fs)
        except Exception as exc:  # noqa: BLE001 - corrupt footer, bad header, ...
            raise ManifestError(f"cannot read manifest as {self.format}: {exc}", self.uri) from exc

    @property
    def base_dir(self) -> str:
        """The folder relative ``audio_uri`` values resolve against."""
        return parent_uri(self.uri)

    def column_names(self) -> list[str]:
        """The manifest's columns (JSON Lines: the keys of the first batch of objects)."""
        if self._dataset is not None:
            return list(self._dataset.schema.names)
        first = next(self.tables(batch_rows=1024), None)
        return first.column_names if first is not None else []

    def count_rows(self) -> int:
        """Number of rows (Parquet: from the footer, without reading the data)."""
        if self._dataset is not None:
            try:
                return int(self._dataset.count_rows())
            except (pa.ArrowException, OSError) as exc:
                raise ManifestError(f"cannot read manifest: {exc}", self.uri) from exc
        return sum(t.num_rows for t in self.tables(columns=[]))

    def tables(
        self, columns: list[str] | None = None, batch_rows: int = DEFAULT_BATCH_ROWS
    ) -> Iterator[pa.Table]:
        """Raw (uncast) tables of at most ``batch_rows`` rows, in file order.

        Args:
            columns: the columns to read (absent ones are skipped); None reads all.
            batch_rows: rows per table.
        """
        if self._dataset is None:
            for table in _json_tables(self.fs, self.path, self.uri, batch_rows):
                yield (
                    table
                    if columns is None
                    else table.select([c for c in columns if c in table.column_names])
                )
            return
        present = None if columns is None else [c for c in columns if c in self.column_names()]
        try:
            # use_threads=False keeps batches in file order, so row numbers in errors are
            # exact; little readahead keeps memory near one batch (a Parquet row group is
            # still read whole).
            for batch in self._dataset.to_batches(
                columns=present,
                batch_size=batch_rows,
                batch_readahead=1,
                fragment_readahead=1,
                use_threads=False,
            ):
                yield pa.Table.from_batches([batch])
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(f"cannot read manifest: {exc}", self.uri) from exc

    def read(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> pa.Table:
        """The whole raw table."""
        tables = list(self.tables(batch_rows=batch_rows))
        if not tables:
            return pa.table({})
        # JSON batches may differ (a key first seen later, null vs. string columns).
        return pa.concat_tables(tables, promote_options="permissive")


def _json_column(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Mixed types (1 and "1", or 2 and "x"): keep them as text and let cast_manifest
        # convert or reject them with the offending row named.
        return pa.array(
            [v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string()
        )


def _json_tables(
    fs: fsspec.AbstractFileSystem, path: str, uri: str, batch_rows: int
) -> Iterator[pa.Table]:
    """JSON Lines objects as tables of ``batch_rows`` rows; blank lines are skipped."""
    names: dict[str, None] = {}  # every key seen so far, in first-seen order
    records: list[dict[str, Any]] = []
    row = 0

    def flush() -> pa.Table:
        for record in records:
            names.update(dict.fromkeys(record))
        return pa.table({n: _json_column([r.get(n) for r in records]) for n in names})

    try:
        with fs.open(path, "rb") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise ManifestError(
                        f"line {number}: invalid JSON: {exc}", uri, row=row
                    ) from None
                if not isinstance(record, dict):
                    raise ManifestError(
                        f"line {number}: expected a JSON object, got {type(record).__name__}",
                        uri,
                        row=row,
                    )
                records.append(record)
                row += 1
                if len(records) == batch_rows:
                    yield flush()
                    records = []
    except ManifestError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest: {exc}", uri) from exc
    if records:
        yield flush()


def count_manifest_rows(uri: str, *, endpoint_url: str | None = None) -> int:
    """Number of rows in a manifest (cheap for Parquet: read from the footer)."""
    return ManifestSource(uri, endpoint_url).count_rows()


# --------------------------------------------------------------------------- writing


def write_manifest(table: pa.Table, uri: str, *, endpoint_url: str | None = None) -> str:
    """Write a manifest table as Parquet, JSON Lines or CSV (by extension); local or s3://.

    Returns:
        The URI written.
    """
    ext = posixpath.splitext(uri)[1].lower()
    fmt = _FORMATS.get(ext)
    if fmt is None:
        raise ManifestError(f"unsupported manifest extension {ext!r}", uri)
    fs, path = get_filesystem(uri, endpoint_url)
    if not is_remote(uri):
        fs.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
    with fs.open(path, "wb") as fh:
        if fmt == "parquet":
            pq.write_table(table, fh)
        elif fmt == "csv":
            pa_csv.write_csv(table, fh)
        else:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table.to_pylist())
            fh.write(text.encode("utf-8"))
    return uri


def manifest_fingerprint(uri: str, *, endpoint_url: str | None = None) -> str:
    """SHA-256 of the manifest file's bytes (streamed), to record which input a run used."""
    fs, path, _, _ = _manifest_path(uri, endpoint_url)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
