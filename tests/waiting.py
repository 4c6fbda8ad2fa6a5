"""Waiting on an observable event with a deadline: the one way tests wait (no fixed sleeps)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(probe: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.02) -> T:
    """Poll ``probe`` until it returns something truthy, and return that.

    Args:
        probe: checks the event (a file, a position, a log line, a status).
        timeout_s: the deadline; generous, since a loaded machine only makes it later.
        what: the event, for the failure message.
        interval_s: the pause between probes (a poll, not a guess at how long things take).

    Raises:
        TimeoutError: the event did not happen before the deadline.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s:.0f} s")
        time.sleep(interval_s)
