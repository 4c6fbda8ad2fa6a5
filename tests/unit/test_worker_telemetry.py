"""What a worker hands its ``record`` callback: one step per utterance (one slot) or per batched
step (several), one read, tokenization and conversation time per conversation, checkpoints as
written, and the occupied slots back at zero when the worker is idle."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dpm_worker import telemetry
from dpm_worker.corpus import UtteranceRow
from dpm_worker.model import EmotionModel
from dpm_worker.worker import ConversationWorker
from tests.unit.test_worker import make_worker, recording, rows_for

AMI = Path(__file__).parents[1] / "fixtures" / "real_speech" / "dev00.flac"


class Recorded:
    """A thread-safe ``record``: the worker calls it from three threads."""

    def __init__(self) -> None:
        self.values: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def __call__(self, name: str, value: float) -> None:
        assert name in telemetry.MEASUREMENTS, name
        with self._lock:
            self.values.append((name, value))

    def counts(self) -> Counter:
        return Counter(name for name, _ in self.values)

    def of(self, name: str) -> list[float]:
        return [v for n, v in self.values if n == name]


def with_record(worker: ConversationWorker, **changes) -> ConversationWorker:
    """The same worker's settings, rebuilt with a recorder (and ``changes`` to the settings)
    on a fresh model (a labeler injects its adapters into the model it gets)."""
    record = Recorded()
    settings = dataclasses.replace(worker.settings, **changes)
    rebuilt = ConversationWorker(settings, model=EmotionModel.random(seed=0), record=record)
    rebuilt.recorded = record  # type: ignore[attr-defined]
    return rebuilt


def test_one_slot_records_a_step_per_utterance_and_each_stage_once(tmp_path) -> None:
    uri = recording(tmp_path / "c.wav", seconds=30.0)
    rows = rows_for("mix", uri, n=21)
    rows[4] = UtteranceRow("mix", 4, "A", uri, 3.0, 2.0)  # reversed: a manifest problem
    rows[13] = UtteranceRow("mix", 13, "B", uri, 41.0, 42.5)  # past the end of the recording
    second = rows_for("next", recording(tmp_path / "n.wav", seed=3))
    worker = with_record(make_worker(tmp_path, EmotionModel.random(seed=0)), checkpoint_every=5)
    first = worker.label("mix", rows, next_conversation=("next", second))
    again = worker.label("next", second)  # its audio was read ahead
    recorded = worker.recorded  # type: ignore[attr-defined]

    assert (first["utterances"], again["utterances"]) == (19, 3)
    assert first["error_types"] == {"ManifestError": 1, "SegmentError": 1}
    assert again["error_types"] == {}
    counts = recorded.counts()
    assert counts[telemetry.STEP_S] == 19 + 3
    assert counts[telemetry.CONVERSATION_S] == 2
    assert counts[telemetry.READ_S] == 2 and "prefetch_wait_s" in again["timings"]
    assert counts[telemetry.TOKENIZE_S] == 2
    assert counts[telemetry.CHECKPOINT] == 3  # after utterances 5, 10 and 15 of 19
    assert counts[telemetry.RESUME] == 0
    assert recorded.of(telemetry.SLOTS_OCCUPIED)[-1] == 0
    assert max(recorded.of(telemetry.SLOTS_OCCUPIED)) == 1
    assert all(v >= 0 for _, v in recorded.values)
    # A conversation is at least as long as the steps, read and tokenization inside it.
    inside = sum(v for n, v in recorded.values if n != telemetry.CONVERSATION_S and "sec" in n)
    assert sum(recorded.of(telemetry.CONVERSATION_S)) >= inside


def test_slots_record_one_step_per_batched_step(tmp_path) -> None:
    worker = with_record(make_worker(tmp_path, EmotionModel.random(seed=0)), slots=3)
    conversations = {
        f"c{i}": rows_for(f"c{i}", recording(tmp_path / f"c{i}.wav", seed=i), n=n)
        for i, n in enumerate((3, 2, 3))
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        summaries = list(pool.map(lambda c: worker.label(c, conversations[c]), conversations))
    recorded = worker.recorded  # type: ignore[attr-defined]
    assert worker.slot_loop is not None
    assert sum(s["utterances"] for s in summaries) == 8
    counts = recorded.counts()
    # Batched: fewer steps than utterances whenever two conversations shared a step.
    assert counts[telemetry.STEP_S] == worker.slot_loop.steps
    assert 3 <= worker.slot_loop.steps <= 8
    assert counts[telemetry.CONVERSATION_S] == counts[telemetry.READ_S] == 3
    occupied = recorded.of(telemetry.SLOTS_OCCUPIED)
    assert max(occupied) <= 3 and occupied[-1] == 0


@pytest.mark.parametrize("slots", [1, 3])
def test_summaries_carry_each_stage_and_the_steps_split_into_llm_and_memory(
    tmp_path, slots
) -> None:
    """The profile of ``dpm bench e2e``: a VAD conversation's read splits into decode and
    segment, tokenization into encode and units, and the steps' seconds (shared by a batch)
    reach the summaries once: summed, they are the recorded step times."""
    worker = with_record(make_worker(tmp_path, EmotionModel.random(seed=0)), slots=slots)
    vad = [UtteranceRow("vad", 0, "A", str(AMI))]  # 30 s of a meeting, segmented by VAD
    conversations = {
        "vad": vad,
        **{f"c{i}": rows_for(f"c{i}", recording(tmp_path / f"c{i}.wav", seed=i)) for i in (1, 2)},
    }
    with ThreadPoolExecutor(max_workers=slots) as pool:
        summaries = list(pool.map(lambda c: worker.label(c, conversations[c]), conversations))
    assert all(s["status"] == "labeled" for s in summaries)
    for s in summaries:
        # (the random model's tokenizer codes in one call: its units are inside encode_s)
        assert {"decode_s", "segment_s", "encode_s", "write_s"} <= set(s["timings"])
        assert s["timings"]["decode_s"] > 0 and s["timings"]["encode_s"] > 0
    assert summaries[0]["timings"]["segment_s"] > 0  # VAD ran on the one-row conversation
    assert summaries[1]["timings"]["segment_s"] == 0.0  # rows with times: nothing to find
    steps = worker.recorded.of(telemetry.STEP_S)  # type: ignore[attr-defined]
    llm = sum(s["timings"].get("llm_s", 0.0) for s in summaries)
    memory = sum(s["timings"].get("memory_s", 0.0) for s in summaries)
    assert memory > 0 and llm > 0  # dpm mode writes the memory at every step
    assert llm + memory == pytest.approx(sum(steps), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("slots", [1, 2])
def test_failed_conversations_are_timed_and_counted_by_type(tmp_path, slots) -> None:
    worker = with_record(make_worker(tmp_path, EmotionModel.random(seed=0)), slots=slots)
    summary = worker.label("gone", rows_for("gone", str(tmp_path / "missing.wav")))
    recorded = worker.recorded  # type: ignore[attr-defined]
    assert summary["status"] == "failed"
    assert sum(summary["error_types"].values()) == summary["error_rows"] == 3
    assert recorded.counts()[telemetry.CONVERSATION_S] == 1
    assert recorded.counts()[telemetry.STEP_S] == 0


def test_a_retried_conversation_records_its_resume_and_only_the_steps_left(tmp_path) -> None:
    from dpm_worker.errors import StorageError

    uri = recording(tmp_path / "c.wav", seconds=30.0)
    rows = rows_for("long", uri, n=12)
    first = with_record(make_worker(tmp_path, EmotionModel.random(seed=0)), checkpoint_every=5)

    def storage_down(*args, **kwargs):
        raise StorageError("the output store went away", "memory://out")

    first.tables.write_emotions = storage_down  # type: ignore[method-assign]
    with pytest.raises(StorageError):  # labeled, checkpointed after 5 and 10, not committed
        first.label("long", rows)
    assert first.recorded.counts()[telemetry.CHECKPOINT] == 2  # type: ignore[attr-defined]

    retry = with_record(make_worker(tmp_path, EmotionModel.random(seed=0)), checkpoint_every=5)
    summary = retry.label("long", rows)
    counts = retry.recorded.counts()  # type: ignore[attr-defined]
    assert (summary["status"], summary["resumed_from"]) == ("labeled", 10)
    assert counts[telemetry.RESUME] == 1
    assert counts[telemetry.STEP_S] == 12 - 10
