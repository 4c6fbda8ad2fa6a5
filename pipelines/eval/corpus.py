"""The corpus as ``dpm eval`` and the benchmarks read and label it, in-process (no Ray).

:func:`load_corpus` reads a manifest, cuts each conversation's audio as the job does and
tokenizes it once (bad input isolated as ``dpm label`` isolates it: ``dpm_worker.worker.error_rows``);
:func:`label_conversations` labels the tokenized conversations with one configuration through
the labeling engine and collects the per-utterance outcomes (``pipelines.eval.results``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from dpm_worker.audio import SegmentsConfig
from dpm_worker.errors import BadInputError
from dpm_worker.memory import LabelingConfig, label_batched
from dpm_worker.tables import ErrorRecord
from dpm_worker.utterance import Utterance
from dpm_worker.worker import input_error_rows, read_conversation, read_segments, segment_limit
from pipelines.eval.results import ModeResult

log = logging.getLogger(__name__)


@dataclass
class Conversation:
    """One conversation's tokenized utterances (gold labels included), shared by every mode."""

    conversation_id: str
    utterances: list[Utterance]
    groups: list[dict[str, str | None]]


def load_conversations(
    corpus: str,
    model,
    limit: int | None = None,
    group_by: tuple[str, ...] = (),
    *,
    segments: SegmentsConfig | None = None,
    require_gold: bool = True,
    timings: dict[str, float] | None = None,
) -> list[Conversation]:
    """:func:`load_corpus` for callers that need every row (benchmarks): the first failed
    row raises.

    Raises:
        BadInputError: a row could not be read, with its reason and URI.
    """
    conversations, errors = load_corpus(
        corpus,
        model,
        limit,
        group_by,
        segments=segments,
        require_gold=require_gold,
        timings=timings,
    )
    if errors:
        first = errors[0]
        raise BadInputError(
            f"{len(errors)} row(s) failed; first: {first.conversation_id!r} utterance "
            f"{first.utterance_index}: {first.error_type}: {first.message}",
            first.input_uri or corpus,
        )
    return conversations


def load_corpus(
    corpus: str,
    model,
    limit: int | None = None,
    group_by: tuple[str, ...] = (),
    keep: Callable[[str], bool] | None = None,
    *,
    segments: SegmentsConfig | None = None,
    require_gold: bool = True,
    timings: dict[str, float] | None = None,
) -> tuple[list[Conversation], list[ErrorRecord]]:
    """Read the manifest, cut each conversation's audio as the job does and tokenize it once;
    keep each utterance's values of the ``group_by`` columns. ``keep``: which conversation ids
    to read (all by default). ``segments``: how untimed mono recordings are cut and diarized
    as ``dpm label``'s ``segments`` section says (None: VAD regions cut only to fit the model).
    ``require_gold``: fail a corpus without gold labels (False: label it anyway, for timing).
    ``timings``: seconds spent reading (decode, resample, segment) and tokenizing are added to
    its ``read`` and ``tokenize`` entries.

    Returns:
        The conversations with something to label, and the error rows of the rest (the
        job's rule, ``dpm_worker.worker.error_rows.read_conversation``).
    """
    from dpm_worker.corpus import read_manifest, to_rows
    from dpm_worker.speech import tokenize_utterances

    table = read_manifest(corpus, labels=model.vocab.labels)
    missing = [c for c in group_by if c not in table.column_names]
    if missing:
        raise BadInputError(
            f"--group-by {missing} not columns of the manifest; it has {table.column_names}",
            corpus,
        )
    by_conv: dict[str, list] = {}
    for row in to_rows(table):
        by_conv.setdefault(row.conversation_id, []).append(row)
    ids = [c for c in by_conv if keep is None or keep(c)][: limit if limit is not None else None]
    longest = segment_limit(model, None)
    out, errors = [], []
    last_log = time.monotonic()
    for n, cid in enumerate(ids):
        if time.monotonic() - last_log > 30.0:  # progress on long corpora
            log.info("read and tokenized %d of %d conversations", n, len(ids))
            last_log = time.monotonic()
        rows = by_conv[cid]
        values = {r.utterance_index: _group_values(r, group_by) for r in rows}
        started = time.perf_counter()
        segments_read, failed = read_conversation(
            cid,
            rows,
            lambda todo: read_segments(
                todo,
                max_segment_s=longest,
                turn_max_s=segments.max_s if segments else None,
                diarization=segments.diarization if segments else None,
            ),
        )
        errors.extend(failed)
        read = time.perf_counter()
        if not segments_read:
            continue
        # An utterance longer than the context is read by LabelingConfig.long_utterances.
        try:
            utterances = list(tokenize_utterances(segments_read, model.speech_tokenizer))
        except BadInputError as exc:  # as the job: the conversation fails
            errors.extend(input_error_rows(cid, rows, exc))
            continue
        finally:
            if timings is not None:
                timings["read"] = timings.get("read", 0.0) + read - started
                timings["tokenize"] = timings.get("tokenize", 0.0) + time.perf_counter() - read
        groups = [values.get(u.utterance_index, {}) for u in utterances]
        out.append(Conversation(cid, utterances, groups))
    if require_gold and not any(u.emotion is not None for c in out for u in c.utterances):
        reason = f" ({len(errors)} rows failed; first: {errors[0].message})" if errors else ""
        raise BadInputError(
            f"the corpus has no gold emotion labels to evaluate against{reason}", corpus
        )
    return out, errors


def _group_values(row, columns: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for column in columns:
        value = getattr(row, column) if hasattr(row, column) else row.extra.get(column)
        out[column] = None if value is None else str(value)
    return out


def label_conversations(
    model, conversations: list[Conversation], config: LabelingConfig, slots: int = 8
) -> ModeResult:
    """Label every conversation with one configuration (the labeling engine, ``slots``
    conversations at once) and collect the per-utterance results."""
    start = time.perf_counter()
    rows = label_batched(model, config, [c.utterances for c in conversations], slots)
    return _collect(conversations, rows, time.perf_counter() - start)


def _collect(conversations: list[Conversation], rows: list, seconds: float) -> ModeResult:
    result = ModeResult()
    result.seconds = seconds
    for conv, labeled in zip(conversations, rows, strict=True):
        for pos, (item, group) in enumerate(zip(labeled, conv.groups, strict=True)):
            result.add(
                item.utterance, item.emotion, position=pos, probs=item.probs, ms=item.ms,
                group=group,
            )  # fmt: skip
    return result
