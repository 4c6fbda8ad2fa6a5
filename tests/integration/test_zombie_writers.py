"""Zombie writers on the local S3 endpoint: a late write never replaces a committed file.

A timed-out actor that was killed may still be writing. Table files are written exclusively
(``If-None-Match: *``), so the first complete write commits and a late one changes nothing;
checkpoints have unique names and the newest wins, so a late, older checkpoint never replaces
a newer one; and a writer killed mid-PUT leaves no object at all, never a torn one.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq

from dpm_worker.memory import ConversationState
from dpm_worker.storage import get_filesystem
from dpm_worker.tables import (
    EMOTIONS,
    CheckpointKey,
    CheckpointStore,
    RunInfo,
    RunTables,
    write_bytes_atomic,
)
from dpm_worker.utterance import LabeledUtterance, Utterance
from tests.integration.conftest import REPO
from tests.waiting import wait_until

LABELS = ("neutral", "happy", "sad", "angry")
KEY = CheckpointKey("model", "config", "inputs")


def run_info() -> RunInfo:
    return RunInfo(
        run_id="zombie-run",
        run_date="2026-11-30",
        labels=LABELS,
        mode="dpm",
        model_id="tiny",
        model_fingerprint="abc",
        code_version="test",
        config={},
    )


def rows(emotion: str) -> list[LabeledUtterance]:
    probs = np.array([0.7 if label == emotion else 0.1 for label in LABELS], dtype=np.float32)
    return [
        LabeledUtterance(Utterance("conv", i, "a", float(i), i + 1.0), emotion, 0.7, probs)
        for i in range(3)
    ]


def read_bytes(uri: str) -> bytes:
    fs, path = get_filesystem(uri)
    fs.invalidate_cache()
    return fs.cat_file(path)


def test_late_table_write_never_replaces_the_committed_file(s3_bucket) -> None:
    tables = RunTables(f"s3://{s3_bucket}/out", run_info())
    uri = tables.write_emotions("conv", rows("happy"), dt.datetime(2026, 11, 30, 12, 0))
    committed = read_bytes(uri)
    # The zombie (the first attempt, killed after a timeout) finishes later with older rows.
    late = tables.write_emotions("conv", rows("sad"), dt.datetime(2026, 11, 30, 11, 0))
    assert late == uri and read_bytes(uri) == committed
    table = pq.read_table(get_filesystem(uri)[0].open(get_filesystem(uri)[1]))
    assert set(table.column("emotion").to_pylist()) == {"happy"}
    assert len(tables.run_files(EMOTIONS)) == 1 and tables.count_rows(EMOTIONS) == 3


def test_racing_writers_one_wins_whole(s3_bucket) -> None:
    uri = f"s3://{s3_bucket}/out/race.bin"
    payloads = [bytes([i]) * (256 * 1024 + i) for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        won = list(pool.map(lambda p: write_bytes_atomic(p, uri, exclusive=True), payloads))
    assert sum(won) == 1
    assert read_bytes(uri) == payloads[won.index(True)]
    assert write_bytes_atomic(b"plain", uri) and read_bytes(uri) == b"plain"  # records: last wins


def state(position: int) -> ConversationState:
    probs = np.full((position, 4), 0.25, dtype=np.float32)
    return ConversationState(
        position, {"a": 0}, [1, 2], probs, [0.0] * position, [3] * position, {}
    )


def test_late_older_checkpoint_never_wins_or_deletes_the_newer(s3_bucket) -> None:
    store = CheckpointStore(f"s3://{s3_bucket}/out", "zombie-run")

    def save(position: int) -> str:
        return store.save("conv", KEY, position, *state(position).to_tensors())

    save(25)
    newer = save(50)  # the retry, further on
    late = save(25)  # the zombie's late checkpoint
    loaded = store.load("conv", KEY, ConversationState.from_tensors)
    assert loaded is not None and loaded.position == 50
    assert read_bytes(newer) and read_bytes(late)  # neither deleted the other
    store.delete("conv")
    assert store.load("conv", KEY, ConversationState.from_tensors) is None


KILLED_WRITER = """
import os, signal, socket, sys
from dpm_worker.tables import write_bytes_atomic

# The writer stops itself once 8 of the 64 MB have left through its socket, so the parent's
# SIGKILL lands mid-body on any machine: no guess at how long the upload takes.
sent, send = 0, socket.socket.send
def counting_send(self, data, *args):
    global sent
    n = send(self, data, *args)
    sent += n
    if sent > 8 * 2**20:
        os.kill(os.getpid(), signal.SIGSTOP)
    return n
socket.socket.send = counting_send
write_bytes_atomic(b"x" * (64 * 1024 * 1024), sys.argv[1], exclusive=True)
"""


def stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP): state ``T`` in /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


def test_writer_killed_mid_put_leaves_no_torn_object(s3_bucket) -> None:
    uri = f"s3://{s3_bucket}/out/killed.bin"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, uri], env=env)
    wait_until(lambda: proc.poll() is not None or stopped(proc.pid), 120, "writer mid-PUT")
    assert proc.poll() is None, "the writer ended before it sent 8 MB"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    fs, path = get_filesystem(uri)
    fs.invalidate_cache()
    assert not fs.exists(path)  # 56 MB of the body never left: nothing, not a torn object
    assert write_bytes_atomic(b"whole", uri, exclusive=True) and read_bytes(uri) == b"whole"
