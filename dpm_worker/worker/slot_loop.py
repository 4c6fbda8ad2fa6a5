"""Several conversations per worker: one thread steps a :class:`SlotLabeler` for every caller.

A worker with ``slots`` > 1 receives conversations as concurrent calls (a Ray actor with
``max_concurrency``; any threads elsewhere). Each call reads and tokenizes its own audio in its
own thread, so the conversations queued behind the running ones have their audio ready when a
slot opens (the prefetch of the slots that open next), then hands the conversation to the one
:class:`SlotLoop` of the worker and waits for its rows. The loop's thread admits waiting
conversations into free slots, runs one batched DPM step over all of them at a time (ordering
within a conversation stays strict), writes each conversation's checkpoints as the one-slot
path does (after every ``checkpoint_every`` utterances of that conversation), and hands a
finished conversation's rows back to its caller at once, which commits its table file while the
loop goes on; the next waiting conversation takes the freed slot before the next step.

Preemption: on SIGTERM (``PreemptionGuard.requested``) the loop finishes the chunks of an
utterance in progress, writes a checkpoint of every conversation it holds, and raises
``SystemExit`` in every waiting caller: in a Ray actor that ends the process, and every
conversation resumes from its own checkpoint wherever it is retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

from dpm_worker.memory import ConversationState, SlotLabeler
from dpm_worker.telemetry import SLOTS_OCCUPIED, STEP_S, Record, discard
from dpm_worker.utterance import LabeledUtterance, Utterance
from dpm_worker.worker.preemption import PreemptionGuard

log = logging.getLogger(__name__)


@dataclass
class SlotJob:
    """One conversation handed to the loop.

    Args:
        key: the conversation's id.
        inputs: its tokenized utterances in dialogue order.
        resume: the state to continue from (its newest valid checkpoint), or None.
        checkpoint: saves a state of this conversation (called from the loop's thread).
        rows: resolves to the labeled rows, or to the error that failed the conversation.
    """

    key: Hashable
    inputs: list[Utterance]
    resume: ConversationState | None
    checkpoint: Callable[[ConversationState], None]
    rows: Future[list[LabeledUtterance]] = field(default_factory=Future)


class SlotLoop:
    """The thread that labels every conversation of a worker, up to ``labeler.slots`` at once.

    Args:
        labeler: the batched labeler (owned by the loop from now on).
        checkpoint_every: checkpoint a conversation after every this many of its utterances
            (0: only on preemption).
        guard: the worker's SIGTERM guard.
        record: receives each batched step's seconds and the occupied slots after every
            change (``dpm_worker.telemetry``); called from the loop's thread.
    """

    def __init__(
        self,
        labeler: SlotLabeler,
        checkpoint_every: int,
        guard: PreemptionGuard,
        record: Record = discard,
    ) -> None:
        self.labeler = labeler
        self.every = checkpoint_every
        self.guard = guard
        self.record = record
        self._waiting: deque[SlotJob] = deque()
        self._jobs: dict[Hashable, SlotJob] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.steps = 0  # batched steps run (tests, benchmarks)
        # seconds of the steps since the last take_seconds(): the memory's writes and the rest
        self._seconds = {"llm_s": 0.0, "memory_s": 0.0}
        self._seconds_lock = threading.Lock()

    def label(self, job: SlotJob) -> list[LabeledUtterance]:
        """Queue ``job`` and wait for its rows (raises what failed it)."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dpm-slots", daemon=True)
                self._thread.start()
            self._waiting.append(job)
            self._cond.notify()
        return job.rows.result()

    def take_seconds(self) -> dict[str, float]:
        """The seconds of the batched steps run since the last call, and restart the count:
        ``memory_s`` in the memory's writes, ``llm_s`` the rest (the backbone's reads, the
        acoustic head, building the steps' rows). Summed over every call, the loop's total."""
        with self._seconds_lock:
            taken = dict(self._seconds)
            self._seconds = dict.fromkeys(taken, 0.0)
        return taken

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        labeler = self.labeler
        while True:
            with self._cond:
                while not self._waiting and not self._jobs:
                    self.guard.busy = False
                    self._cond.wait()
                self.guard.busy = True
                admitted: list[SlotJob] = []
                while self._waiting and len(admitted) < labeler.free:
                    admitted.append(self._waiting.popleft())
            for job in admitted:
                self._admit(job)
            if admitted:
                self.record(SLOTS_OCCUPIED, len(self._jobs))
            if not self._jobs:
                continue
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - a bug or the device: fail what is held
                log.exception("batched step failed; failing %d conversation(s)", len(self._jobs))
                for key in list(self._jobs):
                    self._finish(key, exc)
            if self.guard.requested:
                self._preempted()
                return

    def _admit(self, job: SlotJob) -> None:
        try:
            self.labeler.admit(job.key, job.inputs, job.resume)
        except Exception as exc:  # noqa: BLE001 - e.g. a state that does not fit: its caller's
            job.rows.set_exception(exc)
            return
        self._jobs[job.key] = job
        if self.labeler.finished(job.key):  # resumed at its end
            self._finish(job.key)

    def _step(self) -> None:
        labeler = self.labeler
        written = labeler.step.write_s
        start = time.perf_counter()
        done, failed = labeler.advance()
        seconds = time.perf_counter() - start
        self.record(STEP_S, seconds)
        self.steps += 1
        memory = labeler.step.write_s - written
        with self._seconds_lock:
            self._seconds["memory_s"] += memory
            self._seconds["llm_s"] += seconds - memory
        for key, exc in failed.items():
            self._finish(key, exc)
        for key in done:
            if labeler.finished(key):
                self._finish(key)
                continue
            position = labeler.position(key)
            if self.every and position % self.every == 0:
                self._checkpoint(key)

    def _checkpoint(self, key: Hashable) -> None:
        self._jobs[key].checkpoint(self.labeler.export_state(key))

    def _finish(self, key: Hashable, error: BaseException | None = None) -> None:
        job = self._jobs.pop(key)
        rows = self.labeler.release(key)
        if error is None:
            job.rows.set_result(rows)
        else:
            job.rows.set_exception(error)
        self.record(SLOTS_OCCUPIED, len(self._jobs))

    def _preempted(self) -> None:
        """Checkpoint every conversation held (between utterances), then end every caller."""
        labeler = self.labeler
        try:
            while any(not labeler.between_utterances(k) for k in self._jobs):
                # Finish the chunks in progress: a state is taken between utterances. Others
                # advance too (one batched step), which only makes their checkpoints newer.
                self._step()
            for key in list(self._jobs):
                log.warning(
                    "SIGTERM: conversation %r stops after utterance %d", key, labeler.position(key)
                )
                self._checkpoint(key)
        except Exception:  # noqa: BLE001 - the checkpoints only save time; exit regardless
            log.exception("SIGTERM: not every conversation could be checkpointed")
        for key in list(self._jobs):
            self._finish(key, SystemExit(1))
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
            self._thread = None  # a later call (outside Ray) starts a loop again
        for job in waiting:
            job.rows.set_exception(SystemExit(1))
