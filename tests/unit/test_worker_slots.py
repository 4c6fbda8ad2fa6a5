"""A worker with several slots: concurrent calls share one batched loop; its tables equal the
one-slot worker's; after a death, every conversation it held resumes from its own checkpoint.

The death is simulated in the test, not in the library: the loop's step is wrapped so that
once two conversations are 30 utterances in, the process "ends" (every waiting call gets SystemExit, as in a Ray actor
whose process exits, and the loop's thread stops); a new worker on a new model then labels
the same conversations.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from dpm_worker.model import EmotionModel
from dpm_worker.tables import EMOTIONS, CheckpointStore, read_run_table
from dpm_worker.worker import ConversationWorker
from tests.unit.test_worker_resume import (
    EVERY,
    TARGETS,
    long_conversation,
    settings,
    start_script,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LENGTHS = {"call-a": 70, "call-b": 64, "call-c": 9}


def calls(folder: Path) -> dict[str, list]:
    out = {}
    for name, n in LENGTHS.items():
        (folder / name).mkdir(exist_ok=True)
        rows = long_conversation(folder / name, n)
        out[name] = [dataclasses.replace(r, conversation_id=name) for r in rows]
    return out


def worker(
    out: Path, run_id: str, target: str, slots: int, history_cache: str = "recompute"
) -> ConversationWorker:
    config = dataclasses.replace(settings(out, run_id, TARGETS[target]), slots=slots)
    labeling = dataclasses.replace(config.labeling, history_cache=history_cache)
    config = dataclasses.replace(config, labeling=labeling)
    return ConversationWorker(config, EmotionModel.random(seed=0))


def label_all(w: ConversationWorker, conversations: dict[str, list]) -> dict[str, dict]:
    with ThreadPoolExecutor(max_workers=len(conversations)) as pool:
        futures = {c: pool.submit(w.label, c, rows) for c, rows in conversations.items()}
        return {c: f.result() for c, f in futures.items()}


def table(out: Path):
    frame = read_run_table(str(out), EMOTIONS).to_pandas()
    return frame.sort_values(["conversation_id", "utterance_index"]).reset_index(drop=True)


def probabilities(frame) -> np.ndarray:
    return frame[[c for c in frame.columns if c.startswith("p_")]].to_numpy()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize(
    "target, cache", [(t, "recompute") for t in sorted(TARGETS)] + [("prior", "reuse")]
)
def test_two_slots_die_and_each_conversation_resumes_from_its_checkpoint(
    tmp_path, target, cache
) -> None:
    """Two slots die mid-way; each conversation resumes from its own checkpoint and the tables
    equal a one-slot run. With ``history_cache: reuse`` a resumed conversation rebuilds its
    cache, so the tables are equal as with recompute."""
    conversations = calls(tmp_path)
    clean = worker(tmp_path / "clean", "clean", target, slots=1, history_cache=cache)
    for c, rows in conversations.items():
        assert clean.label(c, rows)["status"] == "labeled"

    first = worker(tmp_path / "out", "run", target, slots=2, history_cache=cache)
    loop = first.slot_loop
    original = loop._step
    at_death: dict[str, int] = {}

    def dies_mid_way() -> None:
        original()
        held = {k: loop.labeler.position(k) for k in loop.labeler.keys}
        if not at_death and len(held) == 2 and min(held.values()) >= 30:
            at_death.update({k: loop.labeler.position(k) for k in loop.labeler.keys})
            for job in loop._jobs.values():  # the process ends: every caller with it
                job.rows.set_exception(SystemExit(1))
            for job in loop._waiting:
                job.rows.set_exception(SystemExit(1))
            raise SystemExit(1)  # the loop's thread ends here; nothing after it runs

    loop._step = dies_mid_way  # type: ignore[method-assign]
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(first.label, c, rows) for c, rows in conversations.items()]
        outcomes = [f.exception(timeout=600) for f in futures]
    assert len(at_death) == 2 and all(p > EVERY for p in at_death.values()), at_death
    finished = [c for c, e in zip(conversations, outcomes, strict=True) if e is None]
    assert all(isinstance(e, SystemExit) for e in outcomes if e is not None)
    store = CheckpointStore(str(tmp_path / "out"), "run")
    for c, position in at_death.items():
        names = os.listdir(store.folder_uri(c))
        assert [int(n[:8]) for n in names] == [position // EVERY * EVERY], (c, names)

    retry = worker(tmp_path / "out", "run", target, slots=2, history_cache=cache)
    summaries = label_all(retry, {c: r for c, r in conversations.items() if c not in finished})
    for c, position in at_death.items():
        assert summaries[c]["status"] == "labeled"
        assert summaries[c]["resumed_from"] == position // EVERY * EVERY
        assert not os.path.exists(store.folder_uri(c))  # deleted once committed
    got, want = table(tmp_path / "out"), table(tmp_path / "clean")
    assert len(got) == sum(LENGTHS.values())
    assert list(got["conversation_id"]) == list(want["conversation_id"])
    assert list(got["utterance_index"]) == list(want["utterance_index"])
    assert list(got["emotion"]) == list(want["emotion"])
    np.testing.assert_allclose(probabilities(got), probabilities(want), rtol=0, atol=1e-5)
    assert np.ptp(probabilities(want)[:, 0]) > 1e-4  # the reads move: a real comparison


def test_three_slots_equal_one_slot_and_bad_input_fails_its_own_conversation(tmp_path) -> None:
    conversations = calls(tmp_path)
    broken = [dataclasses.replace(r, conversation_id="broken") for r in conversations["call-c"]]
    broken[2] = dataclasses.replace(broken[2], start_s=500.0, end_s=501.0)  # past the recording
    conversations["broken"] = broken
    alone = worker(tmp_path / "one", "one", "prior", slots=1)  # one call at a time
    one = {c: alone.label(c, rows) for c, rows in conversations.items()}
    three = label_all(worker(tmp_path / "three", "three", "prior", slots=3), conversations)
    for c in conversations:
        keep = ("status", "rows", "utterances", "error_rows", "chunked", "truncated", "error")
        assert {k: three[c][k] for k in keep} == {k: one[c][k] for k in keep}, c
    assert three["broken"]["error_rows"] == 1 and three["broken"]["utterances"] == 8
    got, want = table(tmp_path / "three"), table(tmp_path / "one")
    assert list(got["utterance_index"]) == list(want["utterance_index"])
    assert list(got["emotion"]) == list(want["emotion"])
    np.testing.assert_allclose(probabilities(got), probabilities(want), rtol=0, atol=1e-5)


SIGTERM_WORKER = """
import logging, sys, torch
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from tests.unit.test_worker_slots import calls, worker
torch.set_num_threads(1)
# One stderr line per utterance labeled: the test times its SIGTERM by them.
logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
logging.getLogger("dpm_worker.memory.slots").setLevel(logging.DEBUG)
folder = Path(sys.argv[1])
conversations = calls(folder)
w = worker(folder / "out", "run", "prior", slots=2)
print("ready", flush=True)
with ThreadPoolExecutor(max_workers=3) as pool:
    futures = [pool.submit(w.label, c, rows) for c, rows in conversations.items()]
    for f in futures:
        f.result()
print("finished", flush=True)
"""


def test_sigterm_checkpoints_every_conversation_held_and_each_resumes(tmp_path) -> None:
    conversations = calls(tmp_path)
    proc = start_script(SIGTERM_WORKER, tmp_path, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    assert proc.stderr is not None
    # Somewhere between two periodic checkpoints: a few utterances past the first (25) in both
    # long calls, read from the labeler's per-utterance lines (a delay is wrong on some load).
    done = {"call-a": 0, "call-b": 0}
    while min(done.values()) < EVERY + 3:
        line = proc.stderr.readline()
        assert line, "the worker ended before the signal"
        found = re.match(r"conversation '(call-[ab])': utterance (\d+) of \d+ labeled", line)
        if found:
            done[found[1]] = int(found[2])
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)  # drains stderr so the worker never blocks on it
    assert proc.returncode != 0
    assert "finished" not in out
    store = CheckpointStore(str(tmp_path / "out"), "run")
    positions = {}
    for c in ("call-a", "call-b"):
        names = os.listdir(store.folder_uri(c))
        assert len(names) == 1, names
        positions[c] = int(names[0][:8])
    # written at the signal: past the first periodic one, not all on the periodic grid
    assert all(p > EVERY for p in positions.values())
    assert any(p % EVERY for p in positions.values()), positions

    retry = worker(tmp_path / "out", "run", "prior", slots=2)
    summaries = label_all(retry, {c: conversations[c] for c in positions})
    assert {c: s["resumed_from"] for c, s in summaries.items()} == positions
    clean = worker(tmp_path / "clean", "clean", "prior", slots=1)
    for c in positions:
        clean.label(c, conversations[c])
    got, want = table(tmp_path / "out"), table(tmp_path / "clean")
    got = got[got["conversation_id"].isin(list(positions))].reset_index(drop=True)
    assert list(got["utterance_index"]) == list(want["utterance_index"])
    np.testing.assert_allclose(probabilities(got), probabilities(want), rtol=0, atol=1e-5)
