"""The scheduler's bookkeeping with plain fakes (no Ray): queue, slots, retries, attempts."""

import itertools
import subprocess
import sys

from pipelines.label.bookkeeping import Bookkeeping, Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Stream:
    """The manifest's conversations; counts how far the driver has read."""

    def __init__(self, n: int) -> None:
        self.read = 0
        self.ids = [f"c{i}" for i in range(n)]

    def __iter__(self):
        for cid in self.ids:
            self.read += 1
            yield cid, [cid]


class Actors:
    """``submit``/``probe`` fakes: each call gets a fresh ref; submissions are recorded."""

    def __init__(self) -> None:
        self.refs = itertools.count()
        self.submitted: list[tuple[int, str, str | None]] = []
        self.probes: list[int] = []

    def submit(self, slot, task, hint):
        self.submitted.append((slot.index, task.conversation_id, hint[0] if hint else None))
        return ("call", next(self.refs))

    def probe(self, slot):
        self.probes.append(slot.index)
        return ("probe", next(self.refs))


def book(n: int, actors: int = 2, in_flight: int = 2, **kw):
    stream = Stream(n)
    clock = Clock()
    b = Bookkeeping(
        [f"h{i}" for i in range(actors)],
        iter(stream),
        Progress(),
        in_flight_per_actor=in_flight,
        clock=clock,
        **kw,
    )
    return b, stream, clock, Actors()


def summary(status: str = "labeled") -> dict:
    return {"status": status, "utterances": 1, "error_rows": 0, "rows": 1, "audio_s": 1.0}


def test_every_conversation_runs_once_with_a_bounded_window():
    b, stream, _clock, actors = book(9)
    b.fill(actors.submit)
    # Two actors, two in flight each, one reserved each: the driver read 6 of 9.
    assert stream.read == 6
    assert all(len(s.in_flight) == 2 and s.reserved is not None for s in b.slots)
    assert actors.submitted[0] == (0, "c0", "c1")  # the hint is the reserved next conversation
    while b.work_left():
        ref = b.waiting(actors.probe)[0]
        slot, task = b.owner(ref)
        b.finished(task, summary())
        b.fill(actors.submit)
        assert all(len(s.in_flight) <= 2 for s in b.slots)
    ran = [cid for _, cid, _ in actors.submitted]
    assert sorted(ran) == sorted(stream.ids) and len(ran) == len(set(ran))
    assert (b.progress.labeled, b.progress.lost, b.lost) == (9, 0, [])


def test_a_dead_actor_requeues_its_work_and_charges_only_the_running_one():
    b, _stream, clock, actors = book(6, in_flight=2)
    b.fill(actors.submit)
    slot0 = b.slots[0]
    first_ref = next(iter(slot0.in_flight))
    slot, task = b.owner(first_ref)
    queued = list(slot0.in_flight.values())
    reserved = slot0.reserved
    b.actor_failed(slot, task, "ActorDiedError")
    assert (task.attempts, [t.attempts for t in queued]) == (1, [0])
    # The running one is charged and requeued first, then the queued one, then the reserved.
    assert [t.conversation_id for t in b.retry] == ["c0", "c1", "c2"]
    assert [task.conversation_id, queued[0].conversation_id, reserved.conversation_id] == [
        "c0",
        "c1",
        "c2",
    ]
    assert slot0.state == "recovering" and not slot0.in_flight and slot0.reserved is None
    assert b.progress.actor_deaths == 1
    # A recovering actor gets no work and is probed only after the probe interval.
    before = len(actors.submitted)
    b.fill(actors.submit)
    assert all(s == 1 for s, _, _ in actors.submitted[before:])
    assert actors.probes == [] and b.waiting(actors.probe) and actors.probes == []
    clock.now += 1.5
    refs = b.waiting(actors.probe)
    assert actors.probes == [0] and slot0.probe in refs
    assert b.owner(slot0.probe) == (slot0, None)
    b.probe_answered(slot0, "alive")
    assert slot0.state == "alive" and slot0.restarts == 1
    # Retries go before new conversations.
    retried = b.retry[0].conversation_id
    b.fill(actors.submit)
    assert [cid for s, cid, _ in actors.submitted[-2:]] == [retried, "c1"]


def test_a_conversation_is_given_up_after_max_attempts():
    b, _stream, _clock, actors = book(1, actors=1, in_flight=1, max_attempts=3)
    for attempt in range(3):
        b.fill(actors.submit)
        slot, task = b.owner(b.waiting(actors.probe)[0])
        b.charge(task, f"boom {attempt}")
    assert b.lost == [("c0", "boom 2")] and b.progress.lost == 1
    assert [cid for _, cid, _ in actors.submitted] == ["c0", "c0", "c0"]
    assert not b.work_left()


def test_a_dead_probe_retires_the_actor_and_the_rest_is_given_up():
    b, stream, clock, actors = book(5, actors=1, in_flight=1)
    b.fill(actors.submit)
    slot, task = b.owner(b.waiting(actors.probe)[0])
    b.actor_failed(slot, task, "RayActorError")
    clock.now += 2
    probe = b.waiting(actors.probe)[-1]
    b.owner(probe)
    b.probe_answered(slot, "retry")
    assert slot.state == "recovering" and slot.next_probe_at == clock.now + 1.0
    b.probe_answered(slot, "dead")
    assert not b.any_usable()
    b.give_up_remaining("every actor is dead")
    assert sorted(cid for cid, _ in b.lost) == stream.ids and b.progress.lost == 5
    assert not b.work_left()


def test_an_overdue_conversation_restarts_its_actor_once_per_timeout():
    b, _stream, clock, actors = book(8, actors=2, in_flight=2, conversation_timeout_s=10.0)
    b.fill(actors.submit)
    clock.now += 5
    b.owner(next(iter(b.slots[1].in_flight)))  # actor 1 finished one: one left, limit 10 s
    clock.now += 10  # 15 s: actor 1 is overdue (1 x 10 s), actor 0 is not (2 x 10 s)
    assert b.timed_out() == [b.slots[1]]
    assert b.timed_out() == []  # the clock of the overdue one restarted
    clock.now += 6
    assert b.timed_out() == [b.slots[0]]


def test_the_bookkeeping_needs_no_ray():
    code = "import sys, pipelines.label.bookkeeping; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
