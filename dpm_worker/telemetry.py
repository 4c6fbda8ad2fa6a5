"""What a labeling worker measures while it runs, handed to a callback as plain numbers.

The library never imports a metrics client: a :class:`~dpm_worker.worker.ConversationWorker`
(and its :class:`~dpm_worker.worker.slot_loop.SlotLoop`) call ``record(name, value)`` with one of the
names below, and whoever runs the worker decides what a number becomes. In the Ray job,
``pipelines.label.metrics`` turns each into a ``ray.util.metrics`` histogram, counter or gauge;
elsewhere (tests, ``dpm eval``) the default :func:`discard` drops them.

``record`` is called from the worker's threads (the caller's, the prefetch reader's and the
slot loop's), so it must be thread-safe and cheap: it runs inside the labeling loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

Record = Callable[[str, float], None]
"""``record(name, value)``: one measurement; ``name`` is one of :data:`MEASUREMENTS`."""

STEP_S = "step_seconds"
"""Seconds of one DPM step: one batched step over every occupied slot (``SlotLoop``), or one
utterance of the one-conversation path (its write + read)."""
READ_S = "read_seconds"
"""Seconds to read and segment one conversation's audio (also when read ahead)."""
TOKENIZE_S = "tokenize_seconds"
"""Seconds to turn one conversation's segments into speech tokens."""
CONVERSATION_S = "conversation_seconds"
"""Seconds of one ``ConversationWorker.label`` call: read, tokenize, label, write (with slots,
also the wait for a free slot)."""
CHECKPOINT = "checkpoints"
"""A conversation checkpoint was written (value 1)."""
RESUME = "resumes"
"""A conversation continues from a checkpoint instead of its first utterance (value 1)."""
SLOTS_OCCUPIED = "slots_occupied"
"""Conversations the worker is labeling right now (a level, not an increment)."""

MEASUREMENTS = (STEP_S, READ_S, TOKENIZE_S, CONVERSATION_S, CHECKPOINT, RESUME, SLOTS_OCCUPIED)


def discard(name: str, value: float) -> None:
    """The default ``record``: measure nothing."""


class StageClock:
    """Adds the seconds of each ``with clock(name):`` block to ``timings[name]``.

    The per-stage seconds of a conversation's summary (``timings``): perf_counter pairs, cheap
    enough for the labeling loop. With ``timings`` None it measures nothing. A generator that
    times its own calls this way never counts its consumer's work between yields.
    """

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.timings is None:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
