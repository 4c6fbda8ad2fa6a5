"""Manifest validation (DESIGN section 7): what makes a manifest or one row unusable.

Two levels, so that a labeling job can fail fast on a broken manifest yet turn one broken
conversation into error rows:

- manifest level (:func:`check_columns`, :func:`cast_manifest`): missing required columns and
  values that cannot be cast to the canonical types. Raise :class:`ManifestError` at once.
- row level (:func:`row_problems` on a table, :func:`conversation_problems` on one
  conversation's rows): nulls, empty ids, negative or reversed times, duplicate utterance
  indices, unknown labels. :func:`validate_manifest` raises on the first one.

Every error names the manifest's URI, the 0-based row and the column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dpm_worker.corpus.schema import MANIFEST_SCHEMA, REQUIRED_COLUMNS, UtteranceRow
from dpm_worker.errors import LabelError, ManifestError

_NON_EMPTY_COLUMNS = ("conversation_id", "speaker", "audio_uri")


class UnknownLabelError(ManifestError, LabelError):
    """A manifest row's gold emotion is not in the label set (both a ManifestError and a
    LabelError, so callers may catch either)."""


class Problem(NamedTuple):
    """One row-level problem: 0-based row in the table, the offending column, what is wrong."""

    row: int
    column: str
    message: str


# ------------------------------------------------------------------- manifest-level checks


def check_columns(schema: pa.Schema | Sequence[str], uri: str) -> None:
    """Fail fast when a required column is missing.

    Args:
        schema: the manifest's (file) schema, or its column names.
        uri: the manifest's URI, for the message.

    Raises:
        ManifestError: naming the first missing column and the columns that were found.
    """
    names = list(schema.names if isinstance(schema, pa.Schema) else schema)
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise ManifestError(
            f"missing required column(s) {missing}; found {names}",
            uri,
            column=missing[0],
        )


def _cast_column(column: pa.ChunkedArray, field: pa.Field, uri: str, row_offset: int):
    if column.type == field.type:
        return column
    try:
        return pc.cast(column, field.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        for i, value in enumerate(column.to_pylist()):
            try:
                pa.array([value]).cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise ManifestError(
                    f"value {value!r} cannot be read as {field.type}",
                    uri,
                    row=row_offset + i,
                    column=field.name,
                ) from exc
        raise ManifestError(
            f"column of type {column.type} cannot be read as {field.type}: {exc}",
            uri,
            column=field.name,
        ) from exc


def cast_manifest(table: pa.Table, uri: str, row_offset: int = 0) -> pa.Table:
    """Cast a raw table to MANIFEST_SCHEMA's types (absent optional columns become nulls;
    extra columns are kept after the canonical ones). Does not check values.

    Raises:
        ManifestError: a required column is missing or a value cannot be cast (row, column).
    """
    check_columns(table.schema, uri)
    arrays = []
    for field in MANIFEST_SCHEMA:
        if field.name in table.column_names:
            arrays.append(_cast_column(table.column(field.name), field, uri, row_offset))
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    fields = list(MANIFEST_SCHEMA)
    for name in table.column_names:
        if name not in MANIFEST_SCHEMA.names:
            arrays.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


# ------------------------------------------------------------------------ row-level checks


def _mask(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _duplicate_rows(table: pa.Table) -> list[tuple[int, int]]:
    """(row, first_row) pairs for every repeated (conversation_id, utterance_index)."""
    keys = pa.table(
        {
            "cid": table.column("conversation_id"),
            "idx": table.column("utterance_index"),
            "row": pa.array(np.arange(table.num_rows, dtype=np.int64)),
        }
    ).filter(pc.and_(pc.is_valid(table["conversation_id"]), pc.is_valid(table["utterance_index"])))
    if keys.num_rows < 2:
        return []
    keys = keys.sort_by([("cid", "ascending"), ("idx", "ascending"), ("row", "ascending")])
    cid, idx, row = keys["cid"], keys["idx"], keys["row"].to_numpy()
    n = keys.num_rows
    same = _mask(pc.and_(pc.equal(cid[1:], cid[: n - 1]), pc.equal(idx[1:], idx[: n - 1])))
    found = []
    first = 0
    for k in range(1, n):
        if same[k - 1]:
            found.append((int(row[k]), int(row[first])))
        else:
            first = k
    return found


def _value(table: pa.Table, column: str, row: int) -> object:
    return table.column(column)[row].as_py()


def row_problems(
    table: pa.Table, labels: Sequence[str] | None = None, *, first_only: bool = False
) -> list[Problem]:
    """Every row-level problem of a table already cast by :func:`cast_manifest`.

    Args:
        table: a manifest table with the canonical columns.
        labels: the allowed emotion labels; None skips the label check.
        first_only: stop at the first problem of each kind (cheaper for strict validation).

    Returns:
        Problems sorted by row, then by column order of the checks.
    """
    # (offending column, mask of bad rows, message template, columns whose values fill it)
    checks: list[tuple[str, np.ndarray, str, tuple[str, ...]]] = []
    for name in REQUIRED_COLUMNS:
        checks.append((name, _mask(pc.is_null(table[name])), f"{name} is null", ()))
    for name in _NON_EMPTY_COLUMNS:
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(table[name])), 0)
        checks.append((name, _mask(empty), f"{name} is empty", ()))
    index = table["utterance_index"]
    checks.append(
        (
            "utterance_index",
            _mask(pc.less(index, 0)),
            "utterance_index {} is negative",
            ("utterance_index",),
        )
    )
    start, end = table["start_s"], table["end_s"]
    for name, col in (("start_s", start), ("end_s", end)):
        not_finite = _mask(pc.invert(pc.is_finite(col)))
        checks.append((name, not_finite, name + " {} is not a finite number", (name,)))
        checks.append((name, _mask(pc.less(col, 0.0)), name + " {} is negative", (name,)))
    only_start = _mask(pc.and_(pc.is_valid(start), pc.is_null(end)))
    checks.append(("end_s", only_start, "start_s {} is given without end_s", ("start_s",)))
    only_end = _mask(pc.and_(pc.is_null(start), pc.is_valid(end)))
    checks.append(("start_s", only_end, "end_s {} is given without start_s", ("end_s",)))
    reversed_ = _mask(pc.less_equal(end, start))
    reversed_text = "end_s {} is not after start_s {} (reversed or empty segment)"
    checks.append(("end_s", reversed_, reversed_text, ("end_s", "start_s")))
    rttm = table["rttm_uri"]
    rttm_timed = _mask(pc.and_(pc.is_valid(rttm), pc.or_(pc.is_valid(start), pc.is_valid(end))))
    rttm_text = (
        "rttm_uri {!r} is given on a row with times (a diarization segments a whole recording)"
    )
    checks.append(("rttm_uri", rttm_timed, rttm_text, ("rttm_uri",)))
    rttm_empty = _mask(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(rttm)), 0))
    checks.append(("rttm_uri", rttm_empty, "rttm_uri is empty", ()))
    channel = _mask(pc.less(table["channel"], 0))
    checks.append(("channel", channel, "channel {} is negative", ("channel",)))
    if labels is not None:
        allowed = pa.array(list(labels), pa.string())
        emotion = table["emotion"]
        unknown = pc.and_(pc.is_valid(emotion), pc.invert(pc.is_in(emotion, value_set=allowed)))
        # Braces in labels must not be taken as placeholders.
        expected = str(list(labels)).replace("{", "{{").replace("}", "}}")
        label_text = "unknown emotion label {!r}; expected one of " + expected
        checks.append(("emotion", _mask(unknown), label_text, ("emotion",)))

    problems: list[Problem] = []
    for column, mask, template, fill in checks:
        rows = np.flatnonzero(mask)
        for r in rows[:1] if first_only else rows:
            message = template.format(*(_value(table, name, int(r)) for name in fill))
            problems.append(Problem(int(r), column, message))
    duplicates = _duplicate_rows(table)
    for r, first in duplicates[:1] if first_only else duplicates:
        problems.append(
            Problem(
                r,
                "utterance_index",
                f"duplicate utterance_index {_value(table, 'utterance_index', r)} in "
                f"conversation {_value(table, 'conversation_id', r)!r} (first at row {first})",
            )
        )
    # Stable sort keeps the check order within a row, so the first problem is deterministic.
    problems.sort(key=lambda p: p.row)
    return problems


def _problem_error(problem: Problem, uri: str) -> ManifestError:
    cls = UnknownLabelError if problem.column == "emotion" else ManifestError
    return cls(problem.message, uri, row=problem.row, column=problem.column)


def validate_manifest(table: pa.Table, uri: str, labels: Sequence[str] | None = None) -> pa.Table:
    """Strictly validate a manifest table and return it cast to MANIFEST_SCHEMA.

    Args:
        table: the raw or cast manifest table, rows in file order (row numbers refer to it).
        uri: the manifest's URI, named in every error.
        labels: the allowed gold emotion labels; None skips the check.

    Raises:
        ManifestError: on the first problem, naming its 0-based row and its column;
            UnknownLabelError (also a LabelError) for an emotion outside ``labels``.
    """
    table = cast_manifest(table, uri)
    problems = row_problems(table, labels, first_only=True)
    if problems:
        raise _problem_error(problems[0], uri)
    return table


def conversation_problems(
    rows: Sequence[UtteranceRow], labels: Sequence[str] | None = None
) -> list[tuple[int | None, str]]:
    """Row-level problems of one conversation, for turning it into error rows.

    Args:
        rows: the conversation's rows (as yielded by :func:`iter_conversations`).
        labels: the allowed gold emotion labels; None skips the check.

    Returns:
        ``(utterance_index or None, message)`` pairs; empty when the conversation is valid.
        Each message names the column.
    """
    out: list[tuple[int | None, str]] = []
    for problem in _python_problems(rows, labels):
        index = rows[problem.row].utterance_index
        out.append((index, f"column {problem.column!r}: {problem.message}"))
    return out


def _python_problems(rows: Sequence[UtteranceRow], labels: Sequence[str] | None) -> list[Problem]:
    """The checks of :func:`row_problems`, in plain Python: a conversation is a few hundred
    rows at most, where pyarrow's per-call overhead (~2 ms per conversation) would dominate.
    Same messages and order; a unit test holds the two implementations equal."""
    allowed = None if labels is None else set(labels)
    problems: list[Problem] = []
    first_at: dict[tuple[str, int], int] = {}
    for pos, row in enumerate(rows):

        def add(column: str, message: str, pos: int = pos) -> None:
            problems.append(Problem(pos, column, message))

        for name in REQUIRED_COLUMNS:
            if getattr(row, name) is None:
                add(name, f"{name} is null")
        for name in _NON_EMPTY_COLUMNS:
            text = getattr(row, name)
            if isinstance(text, str) and not text.strip():
                add(name, f"{name} is empty")
        index, start, end = row.utterance_index, row.start_s, row.end_s
        if index is not None and index < 0:
            add("utterance_index", f"utterance_index {index} is negative")
        for name, t in (("start_s", start), ("end_s", end)):
            if t is not None and not math.isfinite(t):
                add(name, f"{name} {t} is not a finite number")
            if t is not None and t < 0:
                add(name, f"{name} {t} is negative")
        if start is not None and end is None:
            add("end_s", f"start_s {start} is given without end_s")
        if start is None and end is not None:
            add("start_s", f"end_s {end} is given without start_s")
        if start is not None and end is not None and end <= start:
            add("end_s", f"end_s {end} is not after start_s {start} (reversed or empty segment)")
        if row.rttm_uri is not None and (start is not None or end is not None):
            add(
                "rttm_uri",
                f"rttm_uri {row.rttm_uri!r} is given on a row with times (a diarization "
                "segments a whole recording)",
            )
        if isinstance(row.rttm_uri, str) and not row.rttm_uri.strip():
            add("rttm_uri", "rttm_uri is empty")
        if row.channel is not None and row.channel < 0:
            add("channel", f"channel {row.channel} is negative")
        if allowed is not None and row.emotion is not None and row.emotion not in allowed:
            add(
                "emotion",
                f"unknown emotion label {row.emotion!r}; expected one of {list(labels or [])}",
            )
        key = (row.conversation_id, index)
        if index is not None and row.conversation_id is not None:
            if key in first_at:
                add(
                    "utterance_index",
                    f"duplicate utterance_index {index} in conversation "
                    f"{row.conversation_id!r} (first at row {first_at[key]})",
                )
            else:
                first_at[key] = pos
    return problems
