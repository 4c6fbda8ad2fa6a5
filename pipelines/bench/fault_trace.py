"""What ``dpm bench faults`` sees of a labeling job from outside: per-utterance trace lines in
the actors' own log files, and the actors themselves through Ray's state API.

The labeler logs one DEBUG line per utterance labeled (``dpm_worker.memory.slots``). The bench
turns that logger on in every worker of the jobs it drives (:func:`trace_utterances`, run by
Ray as the job's ``worker_process_setup_hook``). Ray writes each worker's stderr to its own
file under the session's ``logs/`` folder, named with the worker's pid, line by line, so the
lines of an actor that was killed are all there: counting them gives the utterances computed,
and the last line of an actor gives the position of the conversation it is labeling.

The same hook lets the bench *hold* an actor where it wants to kill it. A tiny model labels a
whole checkpoint interval in tens of milliseconds, faster than anything outside can watch, so
the bench does not chase the actors: it arms a hold (:func:`arm_hold`: ``every``, ``past``) in
a folder the workers know from ``$DPM_BENCH_HOLD``, and an actor that has just labeled an
utterance ``past`` after a checkpoint (past the first one) reports itself there and waits,
labeling nothing, until the bench kills it or releases it (:func:`release`).
"""

from __future__ import annotations

import ast
import contextlib
import glob
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

TRACE_MARK = "DPM-TRACE"
_MESSAGE = r"conversation (?P<conv>.+): utterance (?P<done>\d+) of (?P<total>\d+) labeled$"
_LINE = re.compile(rf"^{TRACE_MARK} (?P<pid>\d+) {_MESSAGE}")
_MESSAGE_RE = re.compile(_MESSAGE)
# the folder where the bench arms holds and held actors report (inherited by the workers)
HOLD_ENV = "DPM_BENCH_HOLD"
ARM_FILE = "arm.json"
HELD_PREFIX = "held-"
# an actor never waits longer than this for a bench that may have died
HOLD_MAX_S = 300.0
_PID = re.compile(r"-(\d+)\.err$")
WORKER_CLASS = "ConversationWorker"


def trace_utterances() -> None:
    """Ray worker setup hook: the labeler's per-utterance DEBUG lines go to stderr (and an
    armed hold stops the actor after the line, module docstring)."""
    logger = logging.getLogger("dpm_worker.memory.slots")
    logger.setLevel(logging.DEBUG)
    handler = _TraceHandler(sys.stderr, os.environ.get(HOLD_ENV))
    handler.setFormatter(logging.Formatter(f"{TRACE_MARK} %(process)d %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False


class _TraceHandler(logging.StreamHandler):
    """Writes the trace lines; with a hold folder (``$DPM_BENCH_HOLD`` at the worker's start),
    then waits in an armed hold (:func:`hold_if_armed`)."""

    def __init__(self, stream: Any, hold: str | None) -> None:
        super().__init__(stream)
        self.hold = hold

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)  # the line is written (and flushed) before any hold
        if self.hold is None:
            return
        match = _MESSAGE_RE.match(record.getMessage())
        if match:
            hold_if_armed(self.hold, str(match["conv"]), int(match["done"]), int(match["total"]))


def hold_if_armed(folder: str, conversation: str, done: int, total: int) -> None:
    """Wait here while the bench holds this process: its hold is armed, this utterance is
    ``past`` after a checkpoint (past the first, when the conversation has room for it) and
    not the last, and the bench has not released it."""
    arm_path = os.path.join(folder, ARM_FILE)
    try:
        with open(arm_path, encoding="utf-8") as f:
            arm = json.load(f)
    except (OSError, ValueError):
        return
    every, past = int(arm["every"]), int(arm["past"])
    first = every if total > every + past else 0
    if done >= total or done < first or done % every != past:
        return
    held = os.path.join(folder, f"{HELD_PREFIX}{os.getpid()}")
    with open(held, "w", encoding="utf-8") as f:
        json.dump({"conversation": conversation, "done": done, "total": total}, f)
    deadline = time.monotonic() + HOLD_MAX_S
    while os.path.exists(held) and os.path.exists(arm_path) and time.monotonic() < deadline:
        time.sleep(0.01)


def arm_hold(folder: str, every: int, past: int) -> None:
    """Hold the next actors to label an utterance ``past`` after a checkpoint."""
    tmp = os.path.join(folder, ARM_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"every": every, "past": past}, f)
    os.replace(tmp, os.path.join(folder, ARM_FILE))  # never seen half written


def held_pids(folder: str) -> set[int]:
    """The processes waiting in a hold."""
    return {
        int(name[len(HELD_PREFIX) :])
        for name in os.listdir(folder)
        if name.startswith(HELD_PREFIX) and name[len(HELD_PREFIX) :].isdigit()
    }


def release(folder: str, pid: int | None = None) -> None:
    """Let ``pid`` go on (or, with None, disarm and let every held process go on)."""
    if pid is None:
        for name in (ARM_FILE, *(f"{HELD_PREFIX}{p}" for p in held_pids(folder))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, f"{HELD_PREFIX}{pid}"))


def traced_env() -> dict[str, str]:
    """Environment for a driver whose job's workers run :func:`trace_utterances`.

    Ray reads a driver's job config (here only its runtime env's setup hook) from this variable,
    as ``ray job submit`` sets it; the actors' own runtime env (their env vars) is merged in.
    """
    hook = f"{__name__}.{trace_utterances.__name__}"
    config = {"runtime_env": {"worker_process_setup_hook": hook}}
    return {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(config)}


@dataclass
class Attempt:
    """One process's labeling of one conversation: the first and last utterance it labeled."""

    pid: int
    first: int
    last: int
    computed: int
    order: int


@dataclass
class Position:
    """The last utterance an actor process reported."""

    conversation_id: str
    done: int
    total: int


@dataclass
class TraceLog:
    """Reads the trace lines of every worker log under ``logs_dir`` as they grow.

    Args:
        logs_dir: the Ray session's ``logs`` folder.
    """

    logs_dir: str
    offsets: dict[str, int] = field(default_factory=dict)
    partial: dict[str, str] = field(default_factory=dict)
    lines: int = 0
    # (conversation, pid) -> that process's attempt at that conversation, in order of start.
    attempts: dict[tuple[str, int], Attempt] = field(default_factory=dict)
    positions: dict[int, Position] = field(default_factory=dict)

    def scan(self) -> None:
        """Read what was appended since the last scan."""
        for path in glob.glob(os.path.join(self.logs_dir, "worker-*.err")):
            offset = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except OSError:
                continue
            if not data:
                continue
            self.offsets[path] = offset + len(data)
            text = self.partial.pop(path, "") + data.decode("utf-8", "replace")
            *complete, rest = text.split("\n")
            if rest:
                self.partial[path] = rest  # a line still being written
            for line in complete:
                self._parse(line)

    def _parse(self, line: str) -> None:
        match = _LINE.match(line.strip())
        if match is None:
            return
        pid = int(match["pid"])
        conversation = str(ast.literal_eval(match["conv"]))
        self.lines += 1
        done = int(match["done"])
        attempt = self.attempts.setdefault(
            (conversation, pid), Attempt(pid, done, done, 0, len(self.attempts))
        )
        attempt.last = done
        attempt.computed += 1
        self.positions[pid] = Position(conversation, done, int(match["total"]))

    def lost_work(self, since: int = 0) -> list[tuple[int, int]]:
        """(pid, utterances) an attempt computed beyond where the next attempt resumed.

        Attempts are ordered by their start; ``since`` skips the first attempts seen (those
        of an earlier run).
        """
        by_conversation: dict[str, list[Attempt]] = {}
        for (conversation, _), attempt in self.attempts.items():
            if attempt.order >= since:
                by_conversation.setdefault(conversation, []).append(attempt)
        lost = []
        for attempts in by_conversation.values():
            attempts.sort(key=lambda a: a.order)
            for attempt, following in zip(attempts, attempts[1:], strict=False):
                lost.append((attempt.pid, max(0, attempt.last - (following.first - 1))))
        return lost


def worker_actors() -> dict[str, dict]:
    """The labeling actors Ray's GCS knows (id -> its table entry: State, Pid, JobID, ...).

    Read from the GCS actor table, which needs no dashboard (``ray._private.state``).
    """
    from ray._private.state import actors

    table = actors() or {}
    return {
        actor_id: info
        for actor_id, info in table.items()
        if info.get("ActorClassName") == WORKER_CLASS
    }


def process_ended(pid: int) -> bool:
    """True once ``pid`` runs no more: gone, or a zombie its parent has not reaped yet (a
    process that can no longer write a trace line)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    except OSError:  # no /proc (not Linux): ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return state in ("Z", "X")


def wait_processes_ended(pids: set[int], timeout_s: float, poll_s: float = 0.05) -> set[int]:
    """Wait until every pid in ``pids`` has ended or ``timeout_s`` passed; the pids still
    running."""
    deadline = time.monotonic() + timeout_s
    running = {pid for pid in pids if not process_ended(pid)}
    while running and time.monotonic() < deadline:
        time.sleep(poll_s)
        running = {pid for pid in running if not process_ended(pid)}
    return running


def alive_pids(exclude_actors: set[str], exclude_pids: set[int]) -> dict[int, str]:
    """Pid -> actor id of the alive labeling actors, minus the excluded ones."""
    found = {}
    for actor_id, info in worker_actors().items():
        pid = int(info.get("Pid") or 0)
        if info.get("State") != "ALIVE" or not pid:
            continue
        if actor_id in exclude_actors or pid in exclude_pids:
            continue
        found[pid] = actor_id
    return found
