"""The scheduler's bookkeeping, without Ray: the queue, the actors' slots, retries and attempts.

``pipelines.label.scheduler`` wraps it in the Ray loop: it passes in the calls that reach an
actor (``submit``, ``probe``) and reports what came back (a summary, an actor death, an
internal error, a probe's answer). Everything that decides what runs where, what is retried
and what is given up lives here, so it is unit-tested with plain fakes.

Rules: each actor holds at most ``in_flight_per_actor`` conversations plus one reserved as its
next (its audio is prefetched); retries go before new conversations; when an actor dies all its
conversations are requeued and the oldest (the one running) is charged an attempt; a
conversation charged ``max_attempts`` times is given up; a dead actor is probed before it gets
work again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpm_worker.corpus import UtteranceRow
from dpm_worker.tables import RunChecks, RunWarning, run_warnings

log = logging.getLogger("dpm.label")
PROBE_EVERY_S = 1.0

# (conversation_id, rows) of the conversation an actor should prefetch next, or None.
Hint = tuple[str, Sequence[UtteranceRow]] | None


@dataclass
class Task:
    conversation_id: str
    rows: Sequence[UtteranceRow]
    attempts: int = 0
    submitted_at: float = 0.0


@dataclass
class ActorSlot:
    """One actor and what the driver has handed it (its in-flight calls, its reserved next)."""

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
    retries: int = 0  # conversations queued again after a failed attempt
    error_types: dict[str, int] = field(default_factory=dict)  # error rows per error_type
    # what the run checks read (dpm_worker/tables/run_checks.py): labels emitted, confidence
    label_counts: dict[str, int] = field(default_factory=dict)
    confidence_sum: float = 0.0
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
        for label, count in summary.get("label_counts", {}).items():
            self.label_counts[label] = self.label_counts.get(label, 0) + int(count)
        self.confidence_sum += float(summary.get("confidence_sum", 0.0))
        for error_type, rows in summary.get("error_types", {}).items():
            self.error_types[error_type] = self.error_types.get(error_type, 0) + int(rows)
        for stage, seconds in summary.get("timings", {}).items():
            self.stage_s[stage] = self.stage_s.get(stage, 0.0) + float(seconds)

    def warnings(self, checks: RunChecks) -> list[RunWarning]:
        """This session's run warnings (label collapse, low confidence)."""
        return run_warnings(self.label_counts, self.confidence_sum, checks)

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


class Bookkeeping:
    """Which conversation runs on which actor, what is retried and what is given up.

    Args:
        handles: the actors (opaque here; passed back to ``submit`` and ``probe``).
        conversations: the uncommitted conversations, in manifest order.
        progress: counters to update.
        in_flight_per_actor: conversations queued per actor.
        max_attempts: tries per conversation (actor deaths and internal errors).
        conversation_timeout_s: a conversation running longer gets its actor restarted.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        handles: Sequence[Any],
        conversations: Iterator[tuple[str, Sequence[UtteranceRow]]],
        progress: Progress,
        *,
        in_flight_per_actor: int = 2,
        max_attempts: int = 3,
        conversation_timeout_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = [ActorSlot(i, h) for i, h in enumerate(handles)]
        self.stream = conversations
        self.stream_done = False
        self.retry: deque[Task] = deque()
        self.progress = progress
        self.in_flight = in_flight_per_actor
        self.max_attempts = max_attempts
        self.timeout = conversation_timeout_s
        self.clock = clock
        self.lost: list[tuple[str, str]] = []  # (conversation_id, last error)

    # ------------------------------------------------------------------ feeding

    def fill(self, submit: Callable[[ActorSlot, Task, Hint], Any]) -> None:
        """Hand work to every alive actor up to its limit; ``submit`` returns the call's ref."""
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
                task.submitted_at = self.clock()
                slot.in_flight[submit(slot, task, hint)] = task

    def _next_from_stream(self) -> Task | None:
        if self.stream_done:
            return None
        try:
            conversation_id, rows = next(self.stream)
        except StopIteration:
            self.stream_done = True
            return None
        return Task(conversation_id, rows)

    def _take(self, slot: ActorSlot) -> Task | None:
        if self.retry:
            return self.retry.popleft()
        if slot.reserved is not None:
            task, slot.reserved = slot.reserved, None
            return task
        return self._next_from_stream()

    def work_left(self) -> bool:
        """Anything queued, reserved, in flight or still in the stream."""
        return bool(
            self.retry
            or not self.stream_done
            or any(s.reserved for s in self.slots)
            or any(s.in_flight for s in self.slots)
        )

    def any_usable(self) -> bool:
        """Some actor is alive or recovering."""
        return any(s.state != "dead" for s in self.slots)

    def levels(self) -> tuple[int, int]:
        """Conversations waiting on the driver (retries, reserved) and in flight on actors."""
        queued = len(self.retry) + sum(s.reserved is not None for s in self.slots)
        return queued, sum(len(s.in_flight) for s in self.slots)

    def recovering(self) -> bool:
        return any(s.state == "recovering" for s in self.slots)

    def waiting(self, probe: Callable[[ActorSlot], Any]) -> list[Any]:
        """The refs to wait on: every in-flight call plus the probes of recovering actors."""
        refs = [ref for s in self.slots for ref in s.in_flight]
        now = self.clock()
        for slot in self.slots:
            if slot.state == "recovering" and slot.probe is None and now >= slot.next_probe_at:
                slot.probe = probe(slot)
            if slot.probe is not None:
                refs.append(slot.probe)
        return refs

    def owner(self, ref: Any) -> tuple[ActorSlot, Task | None] | None:
        """The slot a ref belongs to and its task (None: the ref is that slot's probe)."""
        for slot in self.slots:
            if ref is slot.probe or (slot.probe is not None and ref == slot.probe):
                slot.probe = None
                return slot, None
            if ref in slot.in_flight:
                return slot, slot.in_flight.pop(ref)
        return None

    # ------------------------------------------------------------------ results

    def finished(self, task: Task, summary: dict[str, Any]) -> None:
        """The actor returned a summary (labeled, or failed with error rows)."""
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

    def actor_failed(self, slot: ActorSlot, task: Task, error: str) -> None:
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
                error,
                len(running),
            )
        for item in sorted(running, key=lambda t: t.submitted_at):
            if item is oldest:
                self.charge(item, f"actor died: {error}")
            else:
                self.retry.append(item)
        if slot.reserved is not None:
            self.retry.append(slot.reserved)
            slot.reserved = None
        # Probe before using it again: calls to a restarting actor fail at once, and a probe
        # that fails with ActorDiedError means its restarts are exhausted.
        slot.state = "recovering"
        slot.next_probe_at = self.clock() + PROBE_EVERY_S

    def probe_answered(self, slot: ActorSlot, outcome: str) -> None:
        """A probe's outcome: ``alive`` (back), ``dead`` (restarts exhausted) or ``retry``."""
        if outcome == "dead":
            slot.state = "dead"
            log.warning("actor %d is dead (restarts exhausted)", slot.index)
        elif outcome == "retry":
            slot.next_probe_at = self.clock() + PROBE_EVERY_S
        else:
            slot.state = "alive"
            slot.restarts += 1
            log.info("actor %d is back", slot.index)

    def charge(self, task: Task, error: str) -> None:
        """One failed attempt: retry the conversation, or give up after ``max_attempts``."""
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
            self.progress.retries += 1

    def timed_out(self) -> list[ActorSlot]:
        """Actors whose running conversation exceeded the timeout (to be restarted)."""
        now = self.clock()
        slots = []
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
                oldest.submitted_at = now  # the failure arrives as an actor death
                slots.append(slot)
        return slots

    def give_up_remaining(self, reason: str) -> None:
        """Give up on everything not yet labeled (every actor is dead)."""
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
