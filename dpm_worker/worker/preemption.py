"""Preemption: SIGTERM (Kubernetes, spot instances) is honoured at the next utterance boundary.

A preempted node sends SIGTERM and kills the process after a grace period (30 s on Kubernetes,
about 2 minutes on spot instances). Exiting at once would lose the conversation's memory since
its last checkpoint; :class:`PreemptionGuard` defers the signal while a conversation is being
labeled, so the worker can write a checkpoint of the utterances finished so far (well inside
the grace period: one utterance plus one checkpoint write) and then exit the way the process
would have without it (the previous handler, e.g. Ray's, or the default action).
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any


class PreemptionGuard:
    """Defers SIGTERM while ``busy``; idle, the signal takes its usual course at once.

    Installed only from the main thread (Python delivers signals there); elsewhere it stays
    inert and ``requested`` is always False.
    """

    def __init__(self) -> None:
        self.busy = False
        self.requested = False
        self._previous: Any = None
        self.installed = threading.current_thread() is threading.main_thread()
        if self.installed:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if not self.busy:
            self.exit_now(frame)

    def exit_now(self, frame: FrameType | None = None) -> None:
        """Leave as SIGTERM would have without this guard."""
        previous = self._previous
        if callable(previous):
            previous(signal.SIGTERM, frame)  # Ray's handler raises SystemExit
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        os.kill(os.getpid(), signal.SIGTERM)
