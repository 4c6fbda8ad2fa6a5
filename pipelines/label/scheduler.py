"""The driver's scheduling loop: conversations to actors with back-pressure, retries, progress.

The driver holds only a bounded window of the manifest: per actor, the conversations in
flight (``in_flight_per_actor``) plus the one reserved as its next, whose audio that actor
prefetches while it computes. Results name their conversation. When an actor dies, its
conversations go back to the queue and are re-run from their first utterance (the memory is
temporary by design, and the output file of a conversation is written whole or not at all, so
a retry cannot duplicate rows). The oldest conversation on the dead actor — the one that was
running — is charged an attempt; after ``max_attempts`` the job gives up on it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayError

from dpm_worker.corpus import UtteranceRow
from dpm_worker.storage import redact

log = logging.getLogger("dpm.label")
_PROBE_EVERY_S = 1.0


@dataclass
class Task:
    conversation_id: str
    rows: Sequence[UtteranceRow]
    attempts: int = 0
    submitted_at: float = 0.0


@dataclass
class Slot:
    """One actor and what the driver has handed it."""

    index: int
    handle: Any
    in_flight: dict[Any, Task] = field(default_factory=dict)
    reserved: Task | None = None
    state: str = "alive"  # alive | recovering | dead
    probe: Any = None
    next_probe_at: float = 0.0
    restarts: int = 0


@dataclass
class Progress:
    """Counters of this driver session; formats the progress and summary lines."""

    total_rows: int | None = None
    started: float = field(default_factory=time.monotonic)
    labeled: int = 0
    failed: int = 0
    partial: int = 0  # labeled, with some utterances in the errors table
    skipped: int = 0
    unchanged: int = 0
    lost: int = 0
    utterances: int = 0
    error_rows: int = 0
    rows_done: int = 0
    rows_skipped: int = 0
    audio_s: float = 0.0
    # Utterances shaped to fit the model: segments cut from longer VAD regions or RTTM turns,
    # and user segments longer than the context read in chunks or truncated.
    split_segments: int = 0
    chunked: int = 0
    truncated: int = 0
    actor_deaths: int = 0
    stage_s: dict[str, float] = field(default_factory=dict)

    def add(self, summary: dict[str, Any]) -> None:
        if summary["status"] == "labeled":
            self.labeled += 1
            self.partial += int(summary["error_rows"]) > 0
        else:
            self.failed += 1
        self.utterances += int(summary["utterances"])
        self.error_rows += int(summary["error_rows"])
        self.rows_done += int(summary["rows"])
        self.audio_s += float(summary["audio_s"])
        for name in ("split_segments", "chunked", "truncated"):
            setattr(self, name, getattr(self, name) + int(summary.get(name, 0)))
        for stage, seconds in summary.get("timings", {}).items():
            self.stage_s[stage] = self.stage_s.get(stage, 0.0) + float(seconds)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.audio_s / 3600.0 / (elapsed / 3600.0)
        eta = "?"
        if self.total_rows is not None and self.rows_done:
            remaining = max(self.total_rows - self.rows_done - self.rows_skipped, 0)
            eta = _clock(remaining * elapsed / self.rows_done)
        total = f"/{self.total_rows}" if self.total_rows is not None else ""
        return (
            f"progress: {self.labeled + self.failed} conversations done ({self.failed} failed, "
            f"{self.skipped} skipped, {self.unchanged} unchanged), "
            f"{self.rows_done + self.rows_skipped}{total} rows, "
            f"{self.utterances} utterances labeled, {self.audio_s / 3600:.3f} h audio, "
            f"{rate:.2f} audio-h/h, ETA {eta}, actor deaths {self.actor_deaths}, "
            f"given up {self.lost}, elapsed {_clock(elapsed)}"
        )


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


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
    ) -> None:
        self.slots = [Slot(i, h) for i, h in enumerate(handles)]
        self.stream = conversations
        self.stream_done = False
        self.retry: deque[Task] = deque()
        self.progress = progress
        self.in_flight = in_flight_per_actor
        self.max_attempts = max_attempts
        self.interval = progress_interval_s
        self.timeout = conversation_timeout_s
        self.on_progress = on_progress or log.info
        self.lost: list[tuple[str, str]] = []  # (conversation_id, last error)

    def run(self) -> None:
        """Schedule until every conversation is committed or given up."""
        next_line = time.monotonic() + self.interval
        while True:
            self._fill()
            waiting = self._refs()
            if not waiting and not self._work_left():
                break
            if not any(s.state != "dead" for s in self.slots):
                self._give_up_remaining("every actor is dead (restarts exhausted)")
                break
            wait_s = min(self.interval, _PROBE_EVERY_S if self._recovering() else self.interval)
            ready: list[Any] = []
            if waiting:
                ready, _ = ray.wait(waiting, num_returns=1, timeout=wait_s)
            else:
                time.sleep(min(wait_s, _PROBE_EVERY_S))
            for ref in ready:
                self._collect(ref)
            self._check_timeouts()
            if time.monotonic() >= next_line:
                self.on_progress(self.progress.line())
                next_line = time.monotonic() + self.interval

    # ------------------------------------------------------------------ feeding

    def _next_from_stream(self) -> Task | None:
        if self.stream_done:
            return None
        try:
            conversation_id, rows = next(self.stream)
        except StopIteration:
            self.stream_done = True
            return None
        return Task(conversation_id, rows)

    def _fill(self) -> None:
        for slot in self.slots:
            if slot.state != "alive":
                continue
            while len(slot.in_flight) < self.in_flight:
                task = self._take(slot)
                if task is None:
                    break
                # Reserve this actor's next conversation so it can prefetch that one's audio.
                if slot.reserved is None and not self.retry:
                    slot.reserved = self._next_from_stream()
                hint = (
                    (slot.reserved.conversation_id, slot.reserved.rows) if slot.reserved else None
                )
                task.submitted_at = time.monotonic()
                ref = slot.handle.label.remote(task.conversation_id, task.rows, hint)
                slot.in_flight[ref] = task

    def _take(self, slot: Slot) -> Task | None:
        if self.retry:
            return self.retry.popleft()
        if slot.reserved is not None:
            task, slot.reserved = slot.reserved, None
            return task
        return self._next_from_stream()

    def _work_left(self) -> bool:
        return bool(
            self.retry
            or not self.stream_done
            or any(s.reserved for s in self.slots)
            or any(s.in_flight for s in self.slots)
        )

    def _refs(self) -> list[Any]:
        refs = [ref for s in self.slots for ref in s.in_flight]
        now = time.monotonic()
        for slot in self.slots:
            if slot.state == "recovering" and slot.probe is None and now >= slot.next_probe_at:
                slot.probe = slot.handle.describe.remote()
            if slot.probe is not None:
                refs.append(slot.probe)
        return refs

    def _recovering(self) -> bool:
        return any(s.state == "recovering" for s in self.slots)

    # ------------------------------------------------------------------ results

    def _collect(self, ref: Any) -> None:
        for slot in self.slots:
            if ref is slot.probe or (slot.probe is not None and ref == slot.probe):
                self._probe_result(slot, ref)
                return
            if ref in slot.in_flight:
                task = slot.in_flight.pop(ref)
                self._task_result(slot, task, ref)
                return

    def _task_result(self, slot: Slot, task: Task, ref: Any) -> None:
        try:
            summary = ray.get(ref, timeout=60)
        except RayActorError as exc:
            self._actor_failed(slot, task, exc)
            return
        except (RayError, GetTimeoutError) as exc:
            # An internal error in the worker (a bug, storage down): retry, then give up.
            self._charge(task, f"{type(exc).__name__}: {redact(str(exc))[-500:]}")
            return
        self.progress.add(summary)
        if summary["status"] != "labeled":
            log.info("conversation %s failed: %s", task.conversation_id, summary.get("error"))
        elif summary["error_rows"]:
            log.info(
                "conversation %s: %d utterance(s) failed, e.g. %s",
                task.conversation_id,
                summary["error_rows"],
                summary.get("error"),
            )

    def _actor_failed(self, slot: Slot, task: Task, exc: RayActorError) -> None:
        """The actor died (or is restarting): requeue its conversations, charge the running one."""
        running = [task, *slot.in_flight.values()]
        slot.in_flight.clear()
        oldest = min(running, key=lambda t: t.submitted_at)
        if slot.state == "alive":
            self.progress.actor_deaths += 1
            log.warning(
                "actor %d failed while labeling %s (%s); requeueing %d conversation(s)",
                slot.index,
                oldest.conversation_id,
                type(exc).__name__,
                len(running),
            )
        for item in sorted(running, key=lambda t: t.submitted_at):
            if item is oldest:
                self._charge(item, f"actor died: {type(exc).__name__}")
            else:
                self.retry.append(item)
        if slot.reserved is not None:
            self.retry.append(slot.reserved)
            slot.reserved = None
        # Probe before using it again: calls to a restarting actor fail at once, and a probe
        # that fails with ActorDiedError means its restarts are exhausted.
        slot.state = "recovering"
        slot.next_probe_at = time.monotonic() + _PROBE_EVERY_S

    def _probe_result(self, slot: Slot, ref: Any) -> None:
        slot.probe = None
        try:
            ray.get(ref, timeout=60)
        except ActorDiedError:
            slot.state = "dead"
            log.warning("actor %d is dead (restarts exhausted)", slot.index)
            return
        except (RayError, GetTimeoutError):
            slot.next_probe_at = time.monotonic() + _PROBE_EVERY_S
            return
        slot.state = "alive"
        slot.restarts += 1
        log.info("actor %d is back", slot.index)

    def _charge(self, task: Task, error: str) -> None:
        task.attempts += 1
        if task.attempts >= self.max_attempts:
            self.lost.append((task.conversation_id, error))
            self.progress.lost += 1
            log.error(
                "giving up on conversation %s after %d attempts: %s",
                task.conversation_id,
                task.attempts,
                error,
            )
        else:
            log.warning(
                "retrying conversation %s (attempt %d failed: %s)",
                task.conversation_id,
                task.attempts,
                error,
            )
            self.retry.append(task)

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.state != "alive" or not slot.in_flight:
                continue
            oldest = min(slot.in_flight.values(), key=lambda t: t.submitted_at)
            # Queued work waits behind the running conversation: allow one timeout per place.
            if now - oldest.submitted_at > self.timeout * len(slot.in_flight):
                log.warning(
                    "conversation %s exceeded %.0f s; restarting actor %d",
                    oldest.conversation_id,
                    self.timeout,
                    slot.index,
                )
                ray.kill(slot.handle, no_restart=False)
                oldest.submitted_at = now  # the failure arrives through ray.wait

    def _give_up_remaining(self, reason: str) -> None:
        tasks = list(self.retry)
        self.retry.clear()
        for slot in self.slots:
            tasks.extend(slot.in_flight.values())
            slot.in_flight.clear()
            if slot.reserved is not None:
                tasks.append(slot.reserved)
                slot.reserved = None
        while (task := self._next_from_stream()) is not None:
            tasks.append(task)
        for task in tasks:
            self.lost.append((task.conversation_id, reason))
            self.progress.lost += 1
        log.error("%s: %d conversation(s) not labeled", reason, len(tasks))
