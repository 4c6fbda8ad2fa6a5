"""Which manifest rows of a conversation become error rows, and what those rows say.

The worker's rule (DESIGN section 7: every input utterance ends in exactly one table): a row
with its own problem fails alone when the conversation stays meaningful without it; otherwise
(an untimed recording to segment, a duplicate or missing index) every row of the conversation
becomes an error row that names why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dpm_worker.audio import conversation_segments
from dpm_worker.corpus import UtteranceRow, conversation_problems, read_rttm
from dpm_worker.diarization import DiarizationConfig
from dpm_worker.errors import BadInputError
from dpm_worker.tables import ErrorRecord
from dpm_worker.utterance import Utterance

RowFailure = tuple[UtteranceRow, BadInputError]
SegmentReader = Callable[[Sequence[UtteranceRow]], tuple[list[Utterance], list[RowFailure]]]


def read_segments(
    rows: Sequence[UtteranceRow],
    *,
    endpoint_url: str | None = None,
    max_segment_s: float | None = None,
    turn_max_s: float | None = None,
    diarization: DiarizationConfig | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[list[Utterance], list[RowFailure]]:
    """One conversation's segments as the job reads them: RTTMs read, over-long segments cut,
    rows that fail alone returned beside the segments (``conversation_segments``; ``timings``
    gets its ``segment_s``).

    Raises:
        BadInputError: the conversation's input fails as a whole.
    """
    diarizations = {
        row.rttm_uri: read_rttm(row.rttm_uri, row.audio_uri, endpoint_url=endpoint_url)
        for row in rows
        if row.rttm_uri and row.start_s is None and row.end_s is None
    }
    failed: list[RowFailure] = []
    segments = conversation_segments(
        rows,
        endpoint_url=endpoint_url,
        max_segment_s=max_segment_s,
        diarizations=diarizations,
        on_row_error=lambda row, exc: failed.append((row, exc)),
        turn_max_s=turn_max_s,
        diarization=diarization,
        timings=timings,
    )
    return segments, failed


def read_conversation(
    conversation_id: str, rows: Sequence[UtteranceRow], read: SegmentReader
) -> tuple[list[Utterance], list[ErrorRecord]]:
    """The segments to label and the error rows of one conversation (the module's rule).

    The one rule of ``dpm label`` and ``dpm eval``: manifest problems first, then the read
    (``read``, e.g. :func:`read_segments`); no segments means the conversation failed.

    Returns:
        ``(segments, errors)``: every manifest row is in exactly one of them (a row segmented
        by VAD or RTTM may be several segments).
    """
    problems = conversation_problems(rows)
    rejected = rejected_rows(rows, problems)
    if rejected is None:
        return [], problem_error_rows(conversation_id, rows, problems)
    errors = problem_error_rows(conversation_id, rejected, problems) if rejected else []
    try:
        segments, failed = read(rows)
    except BadInputError as exc:
        return [], input_error_rows(conversation_id, rows, exc)
    # Rows already rejected by the checks are reported once (the read may fail them too).
    bad = {row.utterance_index for row in rejected}
    segments = [seg for seg in segments if seg.utterance_index not in bad]
    for row, error in failed:
        if row.utterance_index not in bad:
            errors.extend(input_error_rows(conversation_id, [row], error))
    return segments, sort_errors(errors)


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
