"""A long conversation whose worker dies mid-way resumes from its newest checkpoint.

The death is simulated in the test, not in the library: the test wraps the worker's labeler so
that the process "dies" (SystemExit in every caller, as Ray's SIGTERM handler raises) right
after utterance 120; a fresh worker with a fresh model then labels the same conversation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dpm_worker.audio import write_audio
from dpm_worker.corpus import DEFAULT_LABELS, UtteranceRow
from dpm_worker.memory import LabelingConfig, MemoryConfig
from dpm_worker.model import EmotionModel
from dpm_worker.tables import EMOTIONS, CheckpointStore, RunInfo, read_run_table
from dpm_worker.worker import ConversationWorker, WorkerSettings
from tests.waiting import wait_until

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[2]
N_UTTERANCES, KILL_AFTER, EVERY = 204, 120, 25
SIGNAL_AT = 37  # between two periodic checkpoints (25, 50)
TARGETS = {
    "prior": MemoryConfig(steps_per_utterance=1),
    "audio": MemoryConfig(write_target="audio", optimizer="adamw", lr=1e-3, steps_per_utterance=1),
}


def settings(out: Path, run_id: str, memory: MemoryConfig) -> WorkerSettings:
    run = RunInfo(run_id, "2026-11-30", DEFAULT_LABELS, "dpm", "dpm-random-0", "random-0", "t")
    labeling = LabelingConfig(mode="dpm", window_tokens=32, memory=memory)
    return WorkerSettings(str(out), run, labeling=labeling, checkpoint_every=EVERY)


def long_conversation(folder: Path, n: int = N_UTTERANCES) -> list[UtteranceRow]:
    rng = np.random.default_rng(0)
    seconds = n * 0.3
    t = np.arange(int(seconds * 16000)) / 16000
    pitch = 150 + 60 * np.sin(2 * np.pi * t / 7.0)  # prosody that moves along the call
    samples = 0.2 * np.sin(2 * np.pi * pitch * t) * (0.5 + 0.5 * rng.random(t.size))
    uri = str(folder / "call.wav")
    write_audio(uri, samples.astype(np.float32), 16000)
    return [UtteranceRow("call", i, "AB"[i % 2], uri, i * 0.3, i * 0.3 + 0.25) for i in range(n)]


def table(out: Path) -> pd.DataFrame:
    frame = read_run_table(str(out), EMOTIONS).to_pandas()
    return frame.sort_values("utterance_index").reset_index(drop=True)


def probabilities(frame: pd.DataFrame) -> np.ndarray:
    return frame[[f"p_{label}" for label in DEFAULT_LABELS]].to_numpy()


def at_utterance(worker: ConversationWorker, n: int, action: Callable[[], None]) -> None:
    """Run ``action`` when ``worker`` has labeled utterance ``n`` of a conversation, before the
    worker's own work after it (a checkpoint that is due, its SIGTERM check)."""
    labeler = worker.slot_loop.labeler
    original = labeler.advance

    def advance():
        done, failed = original()
        if any(labeler.position(key) == n for key in done):
            action()
        return done, failed

    labeler.advance = advance  # type: ignore[method-assign]


def sigterm_now(worker: ConversationWorker) -> None:
    """A real SIGTERM to this process, returning once the worker's guard has taken it (Python
    runs the handler in the main thread, which waits for the rows meanwhile)."""
    os.kill(os.getpid(), signal.SIGTERM)
    wait_until(lambda: worker.slot_loop.guard.requested, 60, "SIGTERM handling", interval_s=0.001)


@pytest.fixture(scope="module")
def clean_tables(tmp_path_factory):
    """The uninterrupted run of the long conversation, per write target: the reference the
    resumed runs below must equal (same rows, model, settings; computed once per target)."""
    import torch

    done: dict[str, pd.DataFrame] = {}

    def clean_table(target: str) -> pd.DataFrame:
        if target not in done:
            folder = tmp_path_factory.mktemp(f"clean-{target}")
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as every test here runs (one_torch_thread)
            try:
                worker = ConversationWorker(
                    settings(folder / "clean", "clean", TARGETS[target]),
                    EmotionModel.random(seed=0),
                )
                assert worker.label("call", long_conversation(folder))["status"] == "labeled"
            finally:
                torch.set_num_threads(threads)
            done[target] = table(folder / "clean")
        return done[target]

    return clean_table


def die(worker: ConversationWorker) -> Callable[[], None]:
    """The process ends here (as Ray's SIGTERM handler ends it): every caller with it."""

    def action() -> None:
        for job in worker.slot_loop._jobs.values():
            job.rows.set_exception(SystemExit(1))
        raise SystemExit(1)  # the loop's thread ends here; nothing after it runs

    return action


# the simulated death ends the slot loop's thread with SystemExit, as the process would end
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_killed_after_120_resumes_from_100_and_equals_uninterrupted(
    tmp_path, target, clean_tables
) -> None:
    rows = long_conversation(tmp_path)
    memory = TARGETS[target]

    out = tmp_path / "out"
    first = ConversationWorker(settings(out, "run", memory), EmotionModel.random(seed=0))
    at_utterance(
        first, KILL_AFTER, die(first)
    )  # 120 is no checkpoint position: nothing is saved there
    with pytest.raises(SystemExit):
        first.label("call", rows)
    store = CheckpointStore(str(out), "run")
    names = os.listdir(store.folder_uri("call"))
    assert [n[:8] for n in names] == ["00000100"]  # every 25; the older ones dropped
    assert not (out / EMOTIONS).exists()

    retry = ConversationWorker(settings(out, "run", memory), EmotionModel.random(seed=0))
    summary = retry.label("call", rows)
    assert summary["status"] == "labeled" and summary["resumed_from"] == 100
    recomputed = KILL_AFTER - summary["resumed_from"]
    print(json.dumps({"target": target, "resumed_from": 100, "recomputed": recomputed}))
    assert not os.path.exists(store.folder_uri("call"))  # deleted once committed
    got, want = table(out), clean_tables(target)
    assert len(got) == N_UTTERANCES and list(got["utterance_index"]) == list(range(N_UTTERANCES))
    assert list(got["emotion"]) == list(want["emotion"])
    np.testing.assert_allclose(probabilities(got), probabilities(want), rtol=0, atol=1e-6)
    assert np.ptp(probabilities(want)[:, 0]) > 1e-4  # the reads move: a real comparison


SIGTERM_WORKER = """
import signal, sys, torch
from dpm_worker.model import EmotionModel
from dpm_worker.worker import ConversationWorker
from tests.unit.test_worker_resume import (
    long_conversation, settings, TARGETS, SIGNAL_AT, at_utterance, sigterm_now
)
from pathlib import Path
torch.set_num_threads(1)
folder = Path(sys.argv[1])
worker = ConversationWorker(
    settings(folder / "out", "run", TARGETS["prior"]), EmotionModel.random(seed=0)
)
# a real SIGTERM, raised while the worker is busy
at_utterance(worker, SIGNAL_AT, lambda: sigterm_now(worker))
print("ready", flush=True)
worker.label("call", long_conversation(folder))
print("finished", flush=True)
"""


def start_script(script: str, folder: Path, **popen) -> subprocess.Popen:
    """Run ``script`` (a worker that prints "ready", labels, prints "finished") in a child
    Python with ``folder`` as its argument: its own process, so a signal to it is real."""
    return subprocess.Popen(
        [sys.executable, "-c", script, str(folder)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        **popen,
    )


def test_sigterm_mid_conversation_checkpoints_before_exit_and_retry_resumes(
    tmp_path, clean_tables
) -> None:
    rows = long_conversation(tmp_path)
    proc = start_script(SIGTERM_WORKER, tmp_path)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    # The signal is raised in the child after utterance 37 (not timed from here: a delay
    # lands anywhere under load, on a periodic checkpoint too, which proves nothing).
    assert proc.wait(timeout=300) == -signal.SIGTERM  # it exited as SIGTERM asks
    assert "finished" not in proc.stdout.read()
    store = CheckpointStore(str(tmp_path / "out"), "run")
    names = os.listdir(store.folder_uri("call"))
    assert len(names) == 1
    position = int(names[0][:8])
    assert position == SIGNAL_AT  # written at the signal, not at the periodic 25

    retry = ConversationWorker(
        settings(tmp_path / "out", "run", TARGETS["prior"]), EmotionModel.random(seed=0)
    )
    summary = retry.label("call", rows)
    assert summary["resumed_from"] == position
    got, want = table(tmp_path / "out"), clean_tables("prior")
    np.testing.assert_allclose(probabilities(got), probabilities(want), rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_checkpoint_of_another_labeling_config_is_not_resumed(tmp_path, caplog) -> None:
    rows = long_conversation(tmp_path, n=60)
    out = tmp_path / "out"
    first = ConversationWorker(settings(out, "run", TARGETS["prior"]), EmotionModel.random(seed=0))
    at_utterance(first, 30, die(first))
    with pytest.raises(SystemExit):
        first.label("call", rows)
    other = MemoryConfig(steps_per_utterance=1, lr=0.1)  # same run id, another config
    retry = ConversationWorker(settings(out, "run", other), EmotionModel.random(seed=0))
    with caplog.at_level("WARNING", logger="dpm_worker.tables.checkpoints"):
        summary = retry.label("call", rows)
    assert summary["resumed_from"] == 0 and "labeling_hash" in caplog.text
