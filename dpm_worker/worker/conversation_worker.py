"""The per-device labeling worker (DESIGN section 8), a plain class that Ray wraps at the call site.

One ``ConversationWorker`` holds the backbone and speech tokenizer, loaded once. For each
conversation it reads the audio itself, labels the utterances in dialogue order, writes the
conversation's Parquet file itself and returns a small summary; audio never leaves the worker.
While a conversation is being labeled, the next one's audio (named by the caller) is read in a
background thread (``dpm_worker.worker.read_ahead``), so storage latency hides behind compute. The
worker labels up to ``slots`` conversations at once, every utterance step batched across them
(``dpm_worker.worker.slot_loop``, the one labeling engine, 1 slot included); with ``slots`` > 1 its
``label`` is called concurrently, one call per conversation. The concurrent calls tokenize through
the model's one speech tokenizer, whose encoder (the pretrained encoder's) takes what all of
them have pending in one thread and batches equal lengths together
(``dpm_worker.speech.encoder_queue``). What it measures on the way (step, read and tokenize times, checkpoints, occupied
slots) goes to the ``record`` callback (``dpm_worker.telemetry``).

Input problems become error rows. One utterance's own problem (a bad row of a segmented
manifest, times outside its recording, its own clip undecodable) fails that utterance only: it
goes to the errors table and the rest of the conversation is labeled without it. A problem
that makes the rest meaningless fails every row of the conversation: a recording the others
share that cannot be decoded, a bad RTTM, duplicate utterance indices, a bad row of a
recording to segment. Utterances longer than the model's context are never an error:
VAD regions and RTTM turns are cut to fit (``max_segment_s``), the user's segments are read
by ``LabelingConfig.long_utterances``; the summary counts both. Anything else (a bug, storage
down) propagates to the caller, which decides whether to retry.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dpm_worker.audio import SAMPLE_RATE, SegmentsConfig
from dpm_worker.corpus import UtteranceRow
from dpm_worker.errors import BadInputError, ConfigError, StorageError
from dpm_worker.memory import ConversationState, LabelingConfig, SlotLabeler
from dpm_worker.speech import tokenize_utterances
from dpm_worker.tables import (
    CheckpointKey,
    CheckpointStore,
    ErrorRecord,
    RunInfo,
    RunTables,
    labeling_hash,
)
from dpm_worker.telemetry import (
    CHECKPOINT,
    CONVERSATION_S,
    RESUME,
    TOKENIZE_S,
    Record,
    discard,
)
from dpm_worker.utterance import LabeledUtterance, Utterance, inputs_digest
from dpm_worker.worker.error_rows import input_error_rows, read_conversation
from dpm_worker.worker.preemption import PreemptionGuard
from dpm_worker.worker.read_ahead import ReadAhead
from dpm_worker.worker.slot_loop import SlotJob, SlotLoop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs; small and picklable (it travels to every actor).

    Args:
        output_uri: the tables' output prefix.
        run: the run's identity and footer metadata.
        model_uri: the model folder (None: the packaged default model).
        labeling: the labeling mode and DPM hyperparameters.
        device: a torch device string (None: CUDA when available, else CPU).
        dtype: the backbone's dtype name (None: bf16 on CUDA, else float32).
        torch_threads: intra-op threads for torch on CPU (Ray gives workers 1 otherwise).
        endpoint_url: an explicit S3 endpoint (else the environment's).
        max_segment_s: the longest VAD or RTTM segment (None: what the model reads whole;
            a larger value is capped at that).
        segments: how a mono recording's VAD regions are cut into turns (``max_s``).
        checkpoint_every: write a conversation checkpoint after every this many utterances
            (0: only when preempted); a retried conversation resumes from its newest one.
        slots: conversations labeled at once, each utterance step batched across them
            (1: one at a time; a conversation's rows do not depend on it).
        verify_weights: re-hash every model file in full at start (default: sizes, edge
            hashes and the stored fingerprint, which costs milliseconds for any model size).
    """

    output_uri: str
    run: RunInfo
    model_uri: str | None = None
    labeling: LabelingConfig = field(default_factory=LabelingConfig)
    device: str | None = None
    dtype: str | None = None
    torch_threads: int = 1
    endpoint_url: str | None = None
    max_segment_s: float | None = None
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    checkpoint_every: int = 25
    verify_weights: bool = False
    slots: int = 1

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ConfigError(f"slots must be >= 1, got {self.slots}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.torch_threads < 1:
            raise ConfigError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if self.max_segment_s is not None and not self.max_segment_s >= 1.0:
            raise ConfigError(f"max_segment_s must be >= 1 s, got {self.max_segment_s}")
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
        record: receives the worker's measurements (``dpm_worker.telemetry``; the Ray job
            turns them into Prometheus metrics); by default they are dropped.
    """

    def __init__(
        self, settings: WorkerSettings, model: Any = None, record: Record = discard
    ) -> None:
        torch.set_num_threads(settings.torch_threads)
        if model is None:
            from dpm_worker.model import load_model

            model = load_model(
                settings.model_uri,
                device=settings.device,
                endpoint_url=settings.endpoint_url,
                verify_weights=settings.verify_weights,
                dtype=settings.dtype,
            )
        model.check_labels(settings.run.labels)
        self.settings = settings
        self.model = model
        self._guard = PreemptionGuard()  # SIGTERM waits for the step in progress + checkpoints
        self.record = record
        labeler = SlotLabeler(model, settings.labeling, settings.slots)
        self.slot_loop = SlotLoop(labeler, settings.checkpoint_every, self._guard, record)
        self.max_segment_s = segment_limit(model, settings.max_segment_s)
        self.tables = RunTables(settings.output_uri, settings.run, settings.endpoint_url)
        self.audio = ReadAhead(
            settings.endpoint_url,
            self.max_segment_s,
            record,
            settings.segments.max_s,
            settings.segments.diarization,
        )
        self.checkpoints = CheckpointStore(
            settings.output_uri, settings.run.run_id, settings.endpoint_url
        )
        self._labeling_hash = labeling_hash(dataclasses.asdict(settings.labeling))

    def describe(self) -> dict[str, Any]:
        """Identity of the loaded model and process (also a cheap readiness probe)."""
        return {
            "pid": os.getpid(),
            "model_id": self.model.model_id,
            "fingerprint": self.model.fingerprint,
            "device": str(self.model.device),
            "labels": list(self.model.vocab.labels),
            "torch_threads": torch.get_num_threads(),
            "slots": self.settings.slots,
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
            A summary: ``conversation_id``, ``status`` (``labeled``, also when some
            utterances failed, or ``failed``), ``rows`` (manifest rows), ``utterances`` and
            ``error_rows`` written, ``audio_s``, ``split_segments`` (segments cut from longer
            VAD regions or RTTM turns), ``chunked`` and ``truncated`` (utterances longer than
            the context), ``error`` (first message or None), ``error_types`` (error rows per
            ``error_type``) and per-stage ``timings`` (s): this conversation's ``decode_s``,
            ``segment_s`` (its read, also when read ahead), ``read_s`` or ``prefetch_wait_s``
            (what labeling waited for it), ``encode_s``, ``units_s`` and ``tokenize_s`` (the
            speech front end), ``label_s`` (with the wait for a slot), ``write_s`` and
            ``total_s``; and the worker's batched steps since its previous summary,
            ``llm_s`` and ``memory_s`` (shared by the conversations of a batch; summed over a
            run's summaries, the worker's step time).
        """
        start = time.perf_counter()
        try:
            return self._label(conversation_id, list(rows), next_conversation, start)
        finally:
            self.record(CONVERSATION_S, time.perf_counter() - start)

    def close(self) -> None:
        """Stop the prefetch thread (the slot loop's thread is a daemon and idles)."""
        self.audio.close()

    # ------------------------------------------------------------------ steps

    def _label(
        self,
        conversation_id: str,
        rows: list[UtteranceRow],
        next_conversation: tuple[str, Sequence[UtteranceRow]] | None,
        start: float,
    ) -> dict[str, Any]:
        timings: dict[str, float] = {}
        summary: dict[str, Any] = {
            "conversation_id": conversation_id,
            "rows": len(rows),
            "utterances": 0,
            "error_rows": 0,
            "audio_s": 0.0,
            "split_segments": 0,
            "chunked": 0,
            "truncated": 0,
            "error": None,
            "error_types": {},
            "timings": timings,
            "pid": os.getpid(),
        }
        segments, errors = read_conversation(
            conversation_id, rows, lambda todo: self.audio.segments(conversation_id, todo, timings)
        )
        self.audio.read_ahead(next_conversation)
        if not segments:
            return self._fail(summary, rows, errors)
        n_samples = sum(len(s.samples) for s in segments if s.samples is not None)
        summary["audio_s"] = float(n_samples / SAMPLE_RATE)
        summary["split_segments"] = sum(seg.pieces > 1 for seg in segments)
        try:
            utterances = self._predict(conversation_id, segments, summary)
        except BadInputError as exc:
            return self._fail(summary, rows, input_error_rows(conversation_id, rows, exc))
        if not utterances:  # (segments without samples only)
            return self._fail(summary, rows, errors)
        summary["chunked"] = sum(u.chunks > 1 for u in utterances)
        summary["truncated"] = sum(u.truncated for u in utterances)
        # what the run checks read (dpm_worker/tables/run_checks.py)
        summary["label_counts"] = dict(Counter(u.emotion for u in utterances))
        summary["confidence_sum"] = float(sum(u.confidence for u in utterances))
        t0 = time.perf_counter()
        if errors:  # first: the emotions file commits the conversation
            self.tables.write_errors(conversation_id, errors, partial=True)
        summary["file"] = self.tables.write_emotions(
            conversation_id, utterances, dt.datetime.now(dt.UTC)
        )
        self._drop_checkpoints(conversation_id)  # committed: nothing left to resume
        timings["write_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - start
        summary.update(status="labeled", utterances=len(utterances), error_rows=len(errors))
        summary["error_types"] = dict(Counter(e.error_type for e in errors))
        if errors:
            summary["error"] = errors[0].message
        return summary

    def _predict(
        self, conversation_id: str, segments: list[Utterance], summary: dict[str, Any]
    ) -> list[LabeledUtterance]:
        timings = summary["timings"]
        t0 = time.perf_counter()
        tokenizer = self.model.speech_tokenizer
        # No fit check: an utterance longer than the context is read by the labeler's rule.
        inputs = list(tokenize_utterances(segments, tokenizer, timings=timings))
        timings["tokenize_s"] = time.perf_counter() - t0
        self.record(TOKENIZE_S, timings["tokenize_s"])
        t0 = time.perf_counter()
        key = CheckpointKey(self.model.fingerprint, self._labeling_hash, inputs_digest(inputs))
        resume = self._load_checkpoint(conversation_id, key)
        summary["resumed_from"] = resume.position if resume is not None else 0
        if resume is not None:
            self.record(RESUME, 1)
        try:  # label_s includes the wait for a slot
            save = functools.partial(self._save_checkpoint, conversation_id, key)
            return self.slot_loop.label(SlotJob(conversation_id, inputs, resume, save))
        except SystemExit:
            # preempted, every conversation checkpointed: the main thread leaves as SIGTERM
            # would have without the guard (other threads can only raise)
            if self._guard.requested and threading.current_thread() is threading.main_thread():
                self._guard.exit_now()
            raise
        finally:
            timings["label_s"] = time.perf_counter() - t0
            timings.update(self.slot_loop.take_seconds())

    def _load_checkpoint(
        self, conversation_id: str, key: CheckpointKey
    ) -> ConversationState | None:
        try:
            state = self.checkpoints.load(conversation_id, key, ConversationState.from_tensors)
        except StorageError as exc:  # a checkpoint only saves time: label from the start
            log.warning(
                "checkpoints of %r unreadable, labeling from the start: %s", conversation_id, exc
            )
            return None
        if state is not None:
            log.info("conversation %r resumes after utterance %d", conversation_id, state.position)
        return state

    def _save_checkpoint(
        self, conversation_id: str, key: CheckpointKey, state: ConversationState
    ) -> None:
        try:
            tensors, header = state.to_tensors()
            self.checkpoints.save(conversation_id, key, state.position, tensors, header)
            self.record(CHECKPOINT, 1)
        except StorageError as exc:
            log.warning("checkpoint of %r not written: %s", conversation_id, exc)

    def _drop_checkpoints(self, conversation_id: str) -> None:
        try:
            self.checkpoints.delete(conversation_id)
        except StorageError as exc:  # litter only; the run's checkpoints go at its end
            log.warning("checkpoints of %r not deleted: %s", conversation_id, exc)

    def _fail(
        self, summary: dict[str, Any], rows: Sequence[UtteranceRow], errors: list[ErrorRecord]
    ) -> dict[str, Any]:
        summary["file"] = self.tables.write_errors(summary["conversation_id"], errors)
        self._drop_checkpoints(summary["conversation_id"])
        summary.update(status="failed", error_rows=len(errors), error=errors[0].message)
        summary["error_types"] = dict(Counter(e.error_type for e in errors))
        return summary


def segment_limit(model: Any, requested: float | None) -> float:
    """The longest VAD or RTTM segment: ``requested``, capped at what ``model`` reads whole
    (its context minus ``<spk>`` and ``<audio_end>``, one token of margin for tokenizers that
    round up)."""
    fits = float((model.max_context - 3) / model.speech_tokenizer.rate_hz)
    return min(fits, requested or fits)
