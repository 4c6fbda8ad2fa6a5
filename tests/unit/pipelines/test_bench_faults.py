"""``dpm bench faults``' two measuring parts, without Ray: the table comparison and the
per-utterance trace counts."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.bench.fault_tables import compare_tables
from pipelines.bench.fault_trace import (
    TRACE_MARK,
    TraceLog,
    process_ended,
    trace_utterances,
    wait_processes_ended,
)

LABELS = ("neutral", "happy", "sad", "angry")


def write_table(output, rows: list[tuple[str, int, np.ndarray]], name: str = "a") -> None:
    """An emotions table file: (conversation_id, utterance_index, probabilities) per row."""
    folder = output / "emotions" / "run_date=2026-11-30"
    folder.mkdir(parents=True, exist_ok=True)
    probs = np.array([p for _, _, p in rows], dtype=np.float32)
    columns = {
        "conversation_id": [c for c, _, _ in rows],
        "utterance_index": pa.array([i for _, i, _ in rows], pa.int32()),
        "emotion": [LABELS[int(np.argmax(p))] for _, _, p in rows],
        **{f"p_{label}": probs[:, k] for k, label in enumerate(LABELS)},
    }
    pq.write_table(pa.table(columns), folder / f"{name}.parquet")


@pytest.fixture
def rows():
    rng = np.random.default_rng(0)
    raw = rng.random((10, len(LABELS))).astype(np.float32)
    raw /= raw.sum(1, keepdims=True)
    return [(f"c{i // 5}", i % 5, raw[i]) for i in range(10)]


def test_identical_tables_are_equal(tmp_path, rows) -> None:
    write_table(tmp_path / "clean", rows)
    write_table(tmp_path / "faults", list(reversed(rows)))  # row order does not matter
    result = compare_tables(str(tmp_path / "clean"), str(tmp_path / "faults"))
    assert result["tables_equal_clean"] is True
    assert (result["utterances_total"], result["conversations"]) == (10, 2)
    assert result["rows_duplicated"] == result["rows_lost"] == result["rows_extra"] == 0


def test_duplicated_lost_and_changed_rows_are_counted(tmp_path, rows) -> None:
    write_table(tmp_path / "clean", rows)
    changed = [(c, i, p.copy()) for c, i, p in rows[1:]]  # row 0 lost
    changed[0][2][0] += 1e-5  # beyond the 1e-6 tolerance
    write_table(tmp_path / "faults", changed)
    write_table(tmp_path / "faults", rows[3:5], name="late-writer")  # two rows twice
    result = compare_tables(str(tmp_path / "clean"), str(tmp_path / "faults"))
    assert result["rows_lost"] == 1
    assert result["rows_duplicated"] == 2
    assert result["max_abs_prob_diff"] == pytest.approx(1e-5, rel=1e-2)
    assert result["tables_equal_clean"] is False


def test_small_probability_noise_is_within_tolerance(tmp_path, rows) -> None:
    write_table(tmp_path / "clean", rows)
    write_table(tmp_path / "faults", [(c, i, p + np.float32(2e-7)) for c, i, p in rows])
    assert compare_tables(str(tmp_path / "clean"), str(tmp_path / "faults"))["tables_equal_clean"]


def test_trace_counts_utterances_per_attempt_and_lost_work(tmp_path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    # Attempt 1 (pid 11) labels 1..7 of c0 and is killed; attempt 2 (pid 12) resumes after
    # the checkpoint at 5 and labels 6..9; pid 13 labels c1 whole.
    lines = {
        11: [("c0", d) for d in range(1, 8)],
        12: [("c0", d) for d in range(6, 10)],
        13: [("c1", d) for d in range(1, 4)],
    }
    trace = TraceLog(str(logs))
    for pid, entries in lines.items():
        path = logs / f"worker-abc-01000000-{pid}.err"
        text = "".join(
            f"{TRACE_MARK} {pid} conversation {c!r}: utterance {d} of 9 labeled\n"
            for c, d in entries
        )
        path.write_text(":job_id:01000000\n" + text[:-10])  # the last line still being written
        trace.scan()
        with path.open("a") as f:
            f.write(text[-10:])
        trace.scan()
    assert trace.lines == 14
    assert trace.positions[11].done == 7 and trace.positions[12].done == 9
    assert trace.lost_work() == [(11, 2)]  # utterances 6 and 7 were labeled twice
    assert trace.lost_work(since=3) == []


def test_trace_hook_writes_the_labelers_debug_lines(capsys) -> None:
    logger = logging.getLogger("dpm_worker.memory.slots")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    try:
        trace_utterances()
        logger.debug("conversation %r: utterance %d of %d labeled", "c'1", 3, 9)
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]
    err = capsys.readouterr().err.strip()
    assert err.startswith(TRACE_MARK) and err.endswith(
        'conversation "c\'1": utterance 3 of 9 labeled'
    )


def test_a_killed_process_counts_as_ended_before_it_is_reaped() -> None:
    """The bench counts a killed actor's trace lines once its process has ended; a zombie (dead,
    not yet reaped by its parent) can write nothing more, so it has ended too."""
    import signal
    import subprocess

    child = subprocess.Popen(["sleep", "60"])
    try:
        assert not process_ended(child.pid)
        assert wait_processes_ended({child.pid}, timeout_s=0.2) == {child.pid}
        child.send_signal(signal.SIGKILL)
        # not waited for yet: a zombie until ``child.wait()``
        assert wait_processes_ended({child.pid}, timeout_s=30.0) == set()
    finally:
        child.kill()
        child.wait()
    assert process_ended(child.pid)
