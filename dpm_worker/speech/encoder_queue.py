"""One encoder for every conversation a worker tokenizes at once.

A worker with several slots tokenizes each conversation in its caller's thread
(``dpm_worker/worker/conversation_worker.py``). Through an :class:`EncoderQueue` those threads
compute their waves' log-mels themselves (torch, in parallel with everything else the worker
does: reading, decoding, the DPM step) and hand them to one thread that runs the encoder: each
time it wakes it takes every piece pending from every caller and encodes them together, grouped
by length (``SpeechEncoder.encode_mels``: ``batch`` pieces per call, padded to
``bucket_frames``), then gives each caller its own states. One CTranslate2 model serves all of
them, as before; what changes is that the pending work of all callers meets in one place, where
a GPU can batch it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from dpm_worker.speech.encoder import SpeechEncoder
from dpm_worker.speech.encoder_weights import EncoderWeights


@dataclass
class _Request:
    mels: list[np.ndarray]
    states: Future[list[np.ndarray]] = field(default_factory=Future)


class EncoderQueue:
    """:meth:`SpeechEncoder.states` for many threads at once, through one encoding thread.

    Args:
        encoder: the encoder (its ``batch`` and ``bucket_frames`` decide how pending pieces
            are grouped); owned by the queue's thread from now on.
    """

    def __init__(self, encoder: SpeechEncoder) -> None:
        self.encoder = encoder
        self._pending: list[_Request] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.calls = 0  # encode_mels calls made (tests, benchmarks)

    @property
    def weights(self) -> EncoderWeights:
        return self.encoder.weights

    @property
    def width(self) -> int:
        return self.encoder.width

    def states(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each wave's states, as ``encoder.states`` gives them (the log-mels computed in the
        calling thread, the encoder run in the queue's).

        Raises:
            RuntimeError: the queue is closed.
            Exception: what the encoder raised for the group this call's waves were in.
        """
        request = _Request([self.encoder.log_mel(wave) for wave in waves])
        if not request.mels:
            return []
        with self._cond:
            if self._closed:
                raise RuntimeError("the encoder queue is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dpm-encoder", daemon=True)
                self._thread.start()
            self._pending.append(request)
            self._cond.notify()
        return request.states.result()

    def close(self) -> None:
        """Stop the thread once what is pending is encoded (later calls raise)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                taken, self._pending = self._pending, []
            mels = [mel for request in taken for mel in request.mels]
            try:
                states = self.encoder.encode_mels(mels)
            except BaseException as exc:  # noqa: BLE001 - every caller of the group hears it
                for request in taken:
                    request.states.set_exception(exc)
                continue
            finally:
                self.calls += 1
            start = 0
            for request in taken:
                request.states.set_result(states[start : start + len(request.mels)])
                start += len(request.mels)
