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
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest

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
    store.save("conv", KEY, state(25))
    newer = store.save("conv", KEY, state(50))  # the retry, further on
    late = store.save("conv", KEY, state(25))  # the zombie's late checkpoint
    loaded = store.load("conv", KEY)
    assert loaded is not None and loaded.position == 50
    assert read_bytes(newer) and read_bytes(late)  # neither deleted the other
    store.delete("conv")
    assert store.load("conv", KEY) is None


KILLED_WRITER = """
import sys, time
from dpm_worker.tables import write_bytes_atomic
# ~64 MB: the PUT takes long enough on loopback to be killed in the middle.
write_bytes_atomic(b"x" * (64 * 1024 * 1024), sys.argv[1], exclusive=True)
"""


def test_writer_killed_mid_put_leaves_no_torn_object(s3_bucket) -> None:
    uri = f"s3://{s3_bucket}/out/killed.bin"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, uri], env=env)
    time.sleep(2.0)  # imports done, the body on its way
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    fs, path = get_filesystem(uri)
    fs.invalidate_cache()
    if fs.exists(path):  # the PUT had finished: then it is whole
        pytest.skip("the writer finished before the kill; nothing torn to check")
    assert write_bytes_atomic(b"whole", uri, exclusive=True) and read_bytes(uri) == b"whole"
