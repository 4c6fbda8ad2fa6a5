"""Which manifest rows of a conversation become error rows, and what those rows say.

The worker's rule (DESIGN section 7: every input utterance ends in exactly one table): a row
with its own problem fails alone when the conversation stays meaningful without it; otherwise
(an untimed recording to segment, a duplicate or missing index) every row of the conversation
becomes an error row that names why.
"""

from __future__ import annotations

from collections.abc import Sequence

from dpm_worker.corpus import UtteranceRow
from dpm_worker.errors import BadInputError
from dpm_worker.tables import ErrorRecord


def rejected_rows(
    rows: Sequence[UtteranceRow], problems: list[tuple[int | None, str]]
) -> list[UtteranceRow] | None:
    """The rows whose own problems fail only them, or None when the conversation must fail.

    Only a segmented conversation (every row has times) loses single rows, and only rows
    named by a unique utterance index; a duplicate index, a problem without an index or a bad
    row of a recording to segment makes the rest ambiguous.
    """
    if not problems:
        return []
    indices = [row.utterance_index for row in rows]
    named = {index for index, _ in problems}
    untimed = any(row.start_s is None and row.end_s is None for row in rows)
    if untimed or None in named:
        return None
    if any(indices.count(i) != 1 for i in named if i is not None):
        return None
    return [row for row in rows if row.utterance_index in named]


def sort_errors(errors: list[ErrorRecord]) -> list[ErrorRecord]:
    """Error rows in utterance order (conversation-level rows last)."""
    return sorted(errors, key=lambda e: (e.utterance_index is None, e.utterance_index or 0))


def problem_error_rows(
    conversation_id: str, rows: Sequence[UtteranceRow], problems: list[tuple[int | None, str]]
) -> list[ErrorRecord]:
    """One error row per manifest row: its own problems, or why its conversation was rejected."""
    by_index: dict[int | None, list[str]] = {}
    for index, message in problems:
        by_index.setdefault(index, []).append(message)
    overall = f"conversation rejected: {problems[0][1]}"
    return [
        ErrorRecord(
            conversation_id=conversation_id,
            utterance_index=row.utterance_index,
            error_type="ManifestError",
            message="; ".join(by_index.get(row.utterance_index, [])) or overall,
            input_uri=row.audio_uri,
        )
        for row in rows
    ]


def input_error_rows(
    conversation_id: str, rows: Sequence[UtteranceRow], exc: BadInputError
) -> list[ErrorRecord]:
    """One error row per manifest row of a conversation that failed on its input."""
    return [
        ErrorRecord(
            conversation_id=conversation_id,
            utterance_index=row.utterance_index,
            error_type=type(exc).__name__,
            message=str(exc),
            input_uri=exc.uri or row.audio_uri,
        )
        for row in rows
    ]
