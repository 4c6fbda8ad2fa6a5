"""Preemption on a real Ray actor: SIGTERM mid-conversation writes a checkpoint, the retry
resumes from it. The signal is sent to the actor's process, found by the actor's id through
Ray's state API (never by process name)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from dpm_worker.tables import CheckpointStore
from tests.unit.test_worker_resume import EVERY, TARGETS, long_conversation, settings

pytestmark = pytest.mark.integration


class RandomModelWorker:
    """The library's worker on the tiny random model (no model folder to load)."""

    def __init__(self, worker_settings) -> None:
        import torch

        from dpm_worker.model import EmotionModel
        from dpm_worker.worker import ConversationWorker

        torch.set_num_threads(1)
        self.worker = ConversationWorker(worker_settings, EmotionModel.random(seed=0))

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
        .remote(worker_settings)
    )
    assert ray.get(actor.guarded.remote(), timeout=120)  # the actor's __init__ ran on main
    task = actor.label.remote("call", rows)
    store = CheckpointStore(str(tmp_path / "out"), "run")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not os.path.exists(store.folder_uri("call")):
        time.sleep(0.05)
    time.sleep(1.0)
    pid = gcs_actors(actor_id=actor._actor_id.hex())["Pid"]
    os.kill(pid, signal.SIGTERM)  # as Kubernetes / a spot reclaim would
    with pytest.raises(RayActorError):
        ray.get(task, timeout=120)
    names = os.listdir(store.folder_uri("call"))
    assert len(names) == 1
    position = int(names[0][:8])
    # Written at the signal: past the first regular checkpoint, which the wait above saw. A
    # signal that lands in an utterance whose regular checkpoint is due exits right after
    # that one (it is the same state), so the position may also be a multiple of EVERY.
    assert position > EVERY
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
