"""The per-device labeling worker (DESIGN section 8), a plain class that Ray wraps at the call site.

One ``ConversationWorker`` holds the backbone and speech tokenizer, loaded once. For each
conversation it reads the audio itself, labels the utterances in dialogue order, writes the
conversation's Parquet file itself and returns a small summary; audio never leaves the worker.
While a conversation is being labeled, the next one's audio (named by the caller) is read in a
background thread, so storage latency hides behind compute.

Input problems (bad rows, unreadable or silent recordings, utterances the model cannot hold)
become error rows for every manifest row of the conversation: the conversation is one unit,
since its utterances are labeled in context. Anything else (a bug, storage down) propagates
to the caller, which decides whether to retry.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from dpm_worker.audio import SAMPLE_RATE, conversation_segments
from dpm_worker.corpus import UtteranceRow, conversation_problems
from dpm_worker.errors import BadInputError, ConfigError
from dpm_worker.memory import ConversationLabeler, LabelingConfig
from dpm_worker.speech import tokenize_utterances
from dpm_worker.tables import ErrorRecord, RunInfo, RunTables
from dpm_worker.utterance import LabeledUtterance, Utterance

# Test-only fault hook: the worker process exits abruptly after tokenizing this many
# utterances (counted over its lifetime), once per marker file, to prove that a conversation
# whose actor died is relabeled from its first utterance and committed exactly once.
FAULT_ENV = "DPM_FAULT_KILL_AFTER_UTTERANCES"
FAULT_MARKER_ENV = "DPM_FAULT_MARKER"


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs; small and picklable (it travels to every actor).

    Args:
        output_uri: the tables' output prefix.
        run: the run's identity and footer metadata.
        model_uri: the model folder (None: the packaged default model).
        labeling: the labeling mode and DPM hyperparameters.
        device: a torch device string (None: CUDA when available, else CPU).
        torch_threads: intra-op threads for torch on CPU (Ray gives workers 1 otherwise).
        endpoint_url: an explicit S3 endpoint (else the environment's).
    """

    output_uri: str
    run: RunInfo
    model_uri: str | None = None
    labeling: LabelingConfig = field(default_factory=LabelingConfig)
    device: str | None = None
    torch_threads: int = 1
    endpoint_url: str | None = None

    def __post_init__(self) -> None:
        if self.torch_threads < 1:
            raise ConfigError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if self.labeling.mode != self.run.mode:
            raise ConfigError(
                f"labeling mode {self.labeling.mode!r} differs from the run's {self.run.mode!r}"
            )


class ConversationWorker:
    """Labels whole conversations and commits each one's Parquet file.

    Args:
        settings: the worker's configuration.
        model: an already loaded ``EmotionModel`` (tests, in-process use); loaded from
            ``settings.model_uri`` when None.
    """

    def __init__(self, settings: WorkerSettings, model: Any = None) -> None:
        torch.set_num_threads(settings.torch_threads)
        if model is None:
            from dpm_worker.model import load_model

            model = load_model(
                settings.model_uri, device=settings.device, endpoint_url=settings.endpoint_url
            )
        model.check_labels(settings.run.labels)
        self.settings = settings
        self.model = model
        self.labeler = ConversationLabeler(model, settings.labeling)
        self.tables = RunTables(settings.output_uri, settings.run, settings.endpoint_url)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpm-prefetch")
        self._prefetched: tuple[str, Future] | None = None
        self._utterances_seen = 0
        self._fault_after = int(os.environ.get(FAULT_ENV, "0") or 0)

    def describe(self) -> dict[str, Any]:
        """Identity of the loaded model and process (also a cheap readiness probe)."""
        return {
            "pid": os.getpid(),
            "model_id": self.model.model_id,
            "fingerprint": self.model.fingerprint,
            "device": str(self.model.device),
            "labels": list(self.model.vocab.labels),
            "torch_threads": torch.get_num_threads(),
        }

    def label(
        self,
        conversation_id: str,
        rows: Sequence[UtteranceRow],
        next_conversation: tuple[str, Sequence[UtteranceRow]] | None = None,
    ) -> dict[str, Any]:
        """Label one conversation and commit its file (emotions, or errors for bad input).

        Args:
            conversation_id: the conversation's id.
            rows: its manifest rows in dialogue order.
            next_conversation: ``(id, rows)`` of the conversation this worker gets next, whose
                audio is read in the background while this one is labeled.

        Returns:
            A summary: ``conversation_id``, ``status`` (``labeled`` or ``failed``), ``rows``
            (manifest rows), ``utterances`` and ``error_rows`` written, ``audio_s``,
            ``error`` (first message or None) and per-stage ``timings`` in seconds.
        """
        timings: dict[str, float] = {}
        start = time.perf_counter()
        rows = list(rows)
        summary: dict[str, Any] = {
            "conversation_id": conversation_id,
            "rows": len(rows),
            "utterances": 0,
            "error_rows": 0,
            "audio_s": 0.0,
            "error": None,
            "timings": timings,
            "pid": os.getpid(),
        }
        problems = conversation_problems(rows)
        if problems:
            self._schedule_prefetch(next_conversation)
            return self._fail(summary, rows, _problem_errors(conversation_id, rows, problems))
        try:
            segments = self._segments(conversation_id, rows, timings)
        except BadInputError as exc:
            self._schedule_prefetch(next_conversation)
            return self._fail(summary, rows, _input_errors(conversation_id, rows, exc))
        self._schedule_prefetch(next_conversation)
        n_samples = sum(len(s.samples) for s in segments if s.samples is not None)
        summary["audio_s"] = float(n_samples / SAMPLE_RATE)
        try:
            utterances = self._predict(segments, timings)
        except BadInputError as exc:
            return self._fail(summary, rows, _input_errors(conversation_id, rows, exc))
        t0 = time.perf_counter()
        summary["file"] = self.tables.write_emotions(
            conversation_id, utterances, dt.datetime.now(dt.UTC)
        )
        timings["write_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - start
        summary.update(status="labeled", utterances=len(utterances))
        return summary

    def close(self) -> None:
        """Stop the prefetch thread."""
        self._reader.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ steps

    def _read(self, rows: Sequence[UtteranceRow]) -> list[Utterance]:
        return conversation_segments(rows, endpoint_url=self.settings.endpoint_url)

    def _segments(
        self, conversation_id: str, rows: Sequence[UtteranceRow], timings: dict[str, float]
    ) -> list[Utterance]:
        t0 = time.perf_counter()
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched[0] == conversation_id:
            segments = prefetched[1].result()  # re-raises the read's AudioError, if any
            timings["prefetch_wait_s"] = time.perf_counter() - t0
        else:
            if prefetched is not None:
                prefetched[1].cancel()
            segments = self._read(rows)
            timings["read_s"] = time.perf_counter() - t0
        return segments

    def _schedule_prefetch(self, upcoming: tuple[str, Sequence[UtteranceRow]] | None) -> None:
        if upcoming is None:
            return
        conversation_id, rows = upcoming
        self._prefetched = (conversation_id, self._reader.submit(self._read, list(rows)))

    def _predict(
        self, segments: list[Utterance], timings: dict[str, float]
    ) -> list[LabeledUtterance]:
        t0 = time.perf_counter()
        inputs = []
        tokenizer = self.model.speech_tokenizer
        for utt in tokenize_utterances(segments, tokenizer, self.model.check_fits):
            inputs.append(utt)
            self._utterances_seen += 1
            self._maybe_fault()
        timings["tokenize_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        predictions = self.labeler.label_conversation(inputs)
        timings["label_s"] = time.perf_counter() - t0
        return predictions

    def _fail(
        self, summary: dict[str, Any], rows: Sequence[UtteranceRow], errors: list[ErrorRecord]
    ) -> dict[str, Any]:
        summary["file"] = self.tables.write_errors(summary["conversation_id"], errors)
        summary.update(status="failed", error_rows=len(errors), error=errors[0].message)
        return summary

    def _maybe_fault(self) -> None:
        if not self._fault_after or self._utterances_seen < self._fault_after:
            return
        marker = os.environ.get(FAULT_MARKER_ENV)
        if not marker:
            return
        try:
            # O_EXCL: exactly one process ever fires, so the restarted actor runs normally.
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(17)


def _problem_errors(
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


def _input_errors(
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
