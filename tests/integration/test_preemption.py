"""Preemption on a real Ray actor: SIGTERM mid-conversation writes a checkpoint, the retry
resumes from it. The signal is sent to the actor's process, found by the actor's id through
Ray's state API (never by process name).

No timing guess: the actor holds at utterance ``SIGNAL_AT`` (it says so in a file) until its
SIGTERM handler has run, so the signal lands mid-conversation however fast or loaded the
machine is, and the checkpoint it writes is at exactly that position."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from dpm_worker.tables import CheckpointStore
from tests.unit.test_worker_resume import (
    EVERY,
    SIGNAL_AT,
    TARGETS,
    at_utterance,
    long_conversation,
    settings,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


class RandomModelWorker:
    """The library's worker on the tiny random model (no model folder to load)."""

    def __init__(self, worker_settings, hold_file: str | None = None) -> None:
        import torch

        from dpm_worker.model import EmotionModel
        from dpm_worker.worker import ConversationWorker

        torch.set_num_threads(1)
        self.worker = ConversationWorker(worker_settings, EmotionModel.random(seed=0))
        if hold_file is not None:
            at_utterance(self.worker, SIGNAL_AT, lambda: self._hold(hold_file))

    def _hold(self, hold_file: str) -> None:
        """Say where the conversation is, then wait for the SIGTERM (the guard defers it)."""
        Path(hold_file).write_text(str(os.getpid()))
        wait_until(lambda: self.worker._guard.requested, 300, "SIGTERM at the actor")

    def guarded(self) -> bool:
        return self.worker._guard.installed

    def label(self, conversation_id, rows):
        return self.worker.label(conversation_id, rows)


def test_sigterm_to_actor_checkpoints_and_retry_resumes(ray_address, tmp_path) -> None:
    import ray
    from ray._private.state import actors as gcs_actors  # the GCS table: no dashboard needed
    from ray.exceptions import RayActorError

    rows = long_conversation(tmp_path)
    worker_settings = settings(tmp_path / "out", "run", TARGETS["prior"])
    actor = (
        ray.remote(RandomModelWorker)
        .options(num_cpus=0.5, max_restarts=1, max_task_retries=0)
        .remote(worker_settings, str(tmp_path / "held"))
    )
    assert ray.get(actor.guarded.remote(), timeout=120)  # the actor's __init__ ran on main
    task = actor.label.remote("call", rows)
    store = CheckpointStore(str(tmp_path / "out"), "run")
    held = tmp_path / "held"
    wait_until(held.exists, 300, f"utterance {SIGNAL_AT} labeled by the actor")
    # The periodic checkpoint at EVERY came first, as in any preemption past it.
    assert [int(n[:8]) for n in os.listdir(store.folder_uri("call"))] == [EVERY]
    pid = gcs_actors(actor_id=actor._actor_id.hex())["Pid"]
    assert int(held.read_text()) == pid
    os.kill(pid, signal.SIGTERM)  # as Kubernetes / a spot reclaim would
    with pytest.raises(RayActorError):
        ray.get(task, timeout=120)
    names = os.listdir(store.folder_uri("call"))
    assert len(names) == 1
    position = int(names[0][:8])
    assert position == SIGNAL_AT  # written at the signal; it replaced the one at EVERY
    # The retry runs on another actor (Ray does not restart an actor that left through its
    # SIGTERM handler: it counts as an intended exit).
    retry = (
        ray.remote(RandomModelWorker)
        .options(num_cpus=0.5, max_restarts=0, max_task_retries=0)
        .remote(worker_settings)
    )
    summary = ray.get(retry.label.remote("call", rows), timeout=600)
    assert summary["status"] == "labeled" and summary["resumed_from"] == position
    assert summary["pid"] != pid
    ray.kill(retry)
    ray.kill(actor)
