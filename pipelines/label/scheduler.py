"""The driver's scheduling loop: the Ray calls around ``pipelines.label.bookkeeping``.

The driver holds only a bounded window of the manifest: per actor, the conversations in
flight (``in_flight_per_actor``) plus the one reserved as its next, whose audio that actor
prefetches while it computes (with ``slots_per_actor`` > 1, its slots' conversations plus
those waiting for one). Results name their conversation. When an actor dies, all its
conversations go back to the queue and each resumes from its own newest checkpoint (or its
first utterance); the output file of a conversation is written whole or not at all, so a
retry cannot duplicate rows. The oldest conversation on the dead actor — the one that was
running — is charged an attempt; after ``max_attempts`` the job gives up on it. Those
decisions are the bookkeeping's; this module only submits, waits, gets and kills.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayError

from dpm_worker.corpus import UtteranceRow
from dpm_worker.storage import redact
from pipelines.label.bookkeeping import PROBE_EVERY_S, ActorSlot, Bookkeeping, Hint, Progress, Task
from pipelines.label.metrics import DriverMetrics

log = logging.getLogger("dpm.label")


class ConversationScheduler:
    """Runs conversations on actors until the stream is exhausted.

    Args:
        handles: the actors (each has ``label(conversation_id, rows, next_conversation)`` and
            ``describe()``).
        conversations: the uncommitted conversations, in manifest order.
        progress: counters to update.
        in_flight_per_actor: conversations queued per actor.
        max_attempts: tries per conversation (actor deaths and internal errors).
        progress_interval_s: seconds between progress lines.
        conversation_timeout_s: a conversation running longer gets its actor killed
            (and restarted by Ray).
        on_progress: called with each progress line (default: log it).
        metrics: the driver's Prometheus metrics, synced after every event (None: off).
    """

    def __init__(
        self,
        handles: Sequence[Any],
        conversations: Iterator[tuple[str, Sequence[UtteranceRow]]],
        progress: Progress,
        *,
        in_flight_per_actor: int = 2,
        max_attempts: int = 3,
        progress_interval_s: float = 30.0,
        conversation_timeout_s: float = 3600.0,
        on_progress: Callable[[str], None] | None = None,
        metrics: DriverMetrics | None = None,
    ) -> None:
        self.book = Bookkeeping(
            handles,
            conversations,
            progress,
            in_flight_per_actor=in_flight_per_actor,
            max_attempts=max_attempts,
            conversation_timeout_s=conversation_timeout_s,
        )
        self.progress = progress
        self.interval = progress_interval_s
        self.on_progress = on_progress or log.info
        self.metrics = metrics

    @property
    def lost(self) -> list[tuple[str, str]]:
        """(conversation_id, last error) of the conversations given up."""
        return self.book.lost

    def run(self) -> None:
        """Schedule until every conversation is committed or given up."""
        book = self.book
        next_line = time.monotonic() + self.interval
        while True:
            book.fill(_submit)
            waiting = book.waiting(_probe)
            if not waiting and not book.work_left():
                break
            if not book.any_usable():
                book.give_up_remaining("every actor is dead (restarts exhausted)")
                break
            wait_s = min(self.interval, PROBE_EVERY_S if book.recovering() else self.interval)
            ready: list[Any] = []
            if waiting:
                ready, _ = ray.wait(waiting, num_returns=1, timeout=wait_s)
            else:
                time.sleep(min(wait_s, PROBE_EVERY_S))
            for ref in ready:
                self._collect(ref)
            for slot in book.timed_out():
                ray.kill(slot.handle, no_restart=False)  # the failure arrives through ray.wait
            if self.metrics is not None:
                self.metrics.sync(self.progress, *book.levels())
            if time.monotonic() >= next_line:
                self.on_progress(self.progress.line())
                next_line = time.monotonic() + self.interval

    def _collect(self, ref: Any) -> None:
        owner = self.book.owner(ref)
        if owner is None:
            return
        slot, task = owner
        if task is None:
            self.book.probe_answered(slot, _probe_outcome(ref))
            return
        try:
            summary = ray.get(ref, timeout=60)
        except RayActorError as exc:
            self.book.actor_failed(slot, task, type(exc).__name__)
            return
        except (RayError, GetTimeoutError) as exc:
            # An internal error in the worker (a bug, storage down): retry, then give up.
            self.book.charge(task, f"{type(exc).__name__}: {redact(str(exc))[-500:]}")
            return
        self.book.finished(task, summary)


def _submit(slot: ActorSlot, task: Task, hint: Hint) -> Any:
    return slot.handle.label.remote(task.conversation_id, task.rows, hint)


def _probe(slot: ActorSlot) -> Any:
    return slot.handle.describe.remote()


def _probe_outcome(ref: Any) -> str:
    try:
        ray.get(ref, timeout=60)
    except ActorDiedError:
        return "dead"
    except (RayError, GetTimeoutError):
        return "retry"
    return "alive"
