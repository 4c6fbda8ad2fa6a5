"""A worker's audio reader: a conversation's segments read now, or ahead in one background thread.

While a conversation is being labeled, the next one's audio (named by the caller) is read in a
background thread, so storage latency hides behind compute. Only the newest hint is kept: a
conversation the driver gave up on is not read twice. A row whose own audio cannot be read is
handed back as a failure beside the segments (it fails that utterance only); a problem that
spoils the whole conversation raises (``AudioError``, a ``BadInputError``), also from a read
done ahead, when its segments are asked for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from dpm_worker.corpus import UtteranceRow
from dpm_worker.diarization import DiarizationConfig
from dpm_worker.telemetry import READ_S, Record, discard
from dpm_worker.utterance import Utterance
from dpm_worker.worker.error_rows import RowFailure, read_segments


class ReadAhead:
    """Reads conversations' audio into segments, the next one ahead of time.

    Args:
        endpoint_url: an explicit S3 endpoint (else the environment's).
        max_segment_s: the longest VAD or RTTM segment.
        record: receives each read's seconds (``dpm_worker.telemetry.READ_S``).
        turn_max_s: the longest segment cut from a mono recording's VAD region
            (``SegmentsConfig.max_s``; None: only ``max_segment_s``).
        diarization: how mono recordings without RTTM are diarized (None: they are not).
    """

    def __init__(
        self,
        endpoint_url: str | None,
        max_segment_s: float,
        record: Record = discard,
        turn_max_s: float | None = None,
        diarization: DiarizationConfig | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.max_segment_s = max_segment_s
        self.turn_max_s = turn_max_s
        self.diarization = diarization
        self.record = record
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpm-prefetch")
        # conversation id -> its audio being read ahead (calls may be concurrent: slots > 1)
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()

    def read(
        self, rows: Sequence[UtteranceRow], timings: dict[str, float] | None = None
    ) -> tuple[list[Utterance], list[RowFailure]]:
        """The segments of a conversation's rows, and the rows that failed on their own.

        ``timings`` (when given) gets the read's own seconds, wherever it ran: ``segment_s``
        (VAD, diarization, cuts) and ``decode_s`` (the rest: fetching, decoding, resampling).
        """
        start = time.perf_counter()
        own: dict[str, float] = {"segment_s": 0.0}
        segments, failed = read_segments(
            rows,
            endpoint_url=self.endpoint_url,
            max_segment_s=self.max_segment_s,
            turn_max_s=self.turn_max_s,
            diarization=self.diarization,
            timings=own,
        )
        seconds = time.perf_counter() - start
        self.record(READ_S, seconds)  # a read that raised is not timed
        if timings is not None:
            timings["segment_s"] = own["segment_s"]
            timings["decode_s"] = seconds - own["segment_s"]
        return segments, failed

    def _read_timed(
        self, rows: Sequence[UtteranceRow]
    ) -> tuple[list[Utterance], list[RowFailure], dict[str, float]]:
        timings: dict[str, float] = {}
        segments, failed = self.read(rows, timings)
        return segments, failed, timings

    def segments(
        self, conversation_id: str, rows: Sequence[UtteranceRow], timings: dict[str, float]
    ) -> tuple[list[Utterance], list[RowFailure]]:
        """The conversation's read: the one done ahead if any, else read now.

        ``timings`` gets ``prefetch_wait_s`` (waiting for the read ahead) or ``read_s``, and
        the read's own ``decode_s`` and ``segment_s`` (:meth:`read`), also of a read ahead.
        """
        t0 = time.perf_counter()
        with self._lock:
            prefetched = self._pending.pop(conversation_id, None)
        if prefetched is not None:
            segments, failed, own = prefetched.result()  # re-raises the read's AudioError
            timings["prefetch_wait_s"] = time.perf_counter() - t0
            timings.update(own)
        else:
            segments, failed = self.read(rows, timings)
            timings["read_s"] = time.perf_counter() - t0
        return segments, failed

    def read_ahead(self, upcoming: tuple[str, Sequence[UtteranceRow]] | None) -> None:
        """Start reading ``(conversation_id, rows)`` in the background (None: nothing)."""
        if upcoming is None:
            return
        conversation_id, rows = upcoming
        with self._lock:
            if conversation_id in self._pending:
                return
            # Only the newest hint is kept: a hint the driver gave up on is not read twice.
            for stale in self._pending.values():
                stale.cancel()
            self._pending = {conversation_id: self._reader.submit(self._read_timed, list(rows))}

    def close(self) -> None:
        """Stop the background thread (a read in progress finishes on its own)."""
        self._reader.shutdown(wait=False, cancel_futures=True)
