import numpy as np
import pytest

from dpm_worker.audio import write_audio
from dpm_worker.corpus import DEFAULT_LABELS, UtteranceRow
from dpm_worker.errors import ConfigError, LabelError
from dpm_worker.memory import LabelingConfig, MemoryConfig
from dpm_worker.model import EmotionModel
from dpm_worker.tables import EMOTIONS, ERRORS, RunInfo, read_run_table
from dpm_worker.worker import ConversationWorker, WorkerSettings

MODE = "dpm"


@pytest.fixture
def model():
    # A fresh model per test: the DPM labeler injects its adapters into the model it gets.
    return EmotionModel.random(seed=0)


def run_info(run_id="r1", labels=DEFAULT_LABELS, mode=MODE):
    return RunInfo(run_id, "2026-11-26", labels, mode, "dpm-random-0", "random-0", "test")


def make_worker(tmp_path, model, **kw):
    settings = WorkerSettings(
        output_uri=str(tmp_path / "out"),
        run=run_info(**kw),
        labeling=LabelingConfig(
            mode=kw.get("mode", MODE), memory=MemoryConfig(steps_per_utterance=1)
        ),
    )
    return ConversationWorker(settings, model=model)


def recording(path, seconds=4.0, seed=0, amplitude=0.2):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    samples = amplitude * np.sin(2 * np.pi * 180 * t) * (0.5 + rng.random(t.size) * 0.5)
    write_audio(str(path), samples.astype(np.float32), 16000)
    return str(path)


def rows_for(conv, uri, n=3, emotions=("happy", "sad", None)):
    return [
        UtteranceRow(
            conv,
            i,
            "A" if i % 2 == 0 else "B",
            uri,
            i * 1.2,
            i * 1.2 + 1.0,
            emotion=emotions[i % len(emotions)],
        )
        for i in range(n)
    ]


def test_label_writes_one_row_per_utterance(tmp_path, model):
    uri = recording(tmp_path / "c1.wav")
    worker = make_worker(tmp_path, model)
    summary = worker.label("c1", rows_for("c1", uri))
    assert summary["status"] == "labeled" and summary["utterances"] == 3
    assert summary["audio_s"] == pytest.approx(3.0, abs=0.01)
    table = read_run_table(str(tmp_path / "out"), EMOTIONS).to_pylist()
    assert [r["utterance_index"] for r in table] == [0, 1, 2]
    assert [r["gold_emotion"] for r in table] == ["happy", "sad", None]
    for row in table:
        probs = [row[f"p_{label}"] for label in DEFAULT_LABELS]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert row["emotion"] == DEFAULT_LABELS[int(np.argmax(probs))]
        assert row["confidence"] == pytest.approx(max(probs))
        assert row["mode"] == "dpm" and row["run_id"] == "r1"


def test_same_input_same_rows(tmp_path, model):
    uri = recording(tmp_path / "c.wav")
    a = make_worker(tmp_path / "a", model)
    b = make_worker(tmp_path / "b", EmotionModel.random(seed=0))
    a.label("c", rows_for("c", uri))
    b.label("c", rows_for("c", uri))
    drop = ["labeled_at"]
    ta = read_run_table(str(tmp_path / "a" / "out"), EMOTIONS).drop(drop)
    tb = read_run_table(str(tmp_path / "b" / "out"), EMOTIONS).drop(drop)
    assert ta.equals(tb)


def test_missing_recording_becomes_error_rows(tmp_path, model):
    worker = make_worker(tmp_path, model)
    rows = rows_for("gone", str(tmp_path / "nope.wav"), n=4)
    summary = worker.label("gone", rows)
    assert summary["status"] == "failed" and summary["error_rows"] == 4
    errors = read_run_table(str(tmp_path / "out"), ERRORS).to_pylist()
    assert [e["utterance_index"] for e in errors] == [0, 1, 2, 3]
    assert {e["error_type"] for e in errors} == {"AudioError"}
    assert all("nope.wav" in e["input_uri"] for e in errors)
    assert read_run_table(str(tmp_path / "out"), EMOTIONS).num_rows == 0


def test_bad_rows_reject_their_conversation(tmp_path, model):
    uri = recording(tmp_path / "c.wav")
    rows = rows_for("dup", uri, n=3)
    rows[2] = UtteranceRow("dup", 1, "A", uri, 2.5, 3.0)  # duplicate index
    worker = make_worker(tmp_path, model)
    summary = worker.label("dup", rows)
    assert summary["status"] == "failed"
    errors = read_run_table(str(tmp_path / "out"), ERRORS).to_pylist()
    assert len(errors) == 3 and {e["error_type"] for e in errors} == {"ManifestError"}
    assert any("utterance_index" in e["message"] for e in errors)


def test_a_bad_row_fails_alone_and_the_rest_is_labeled(tmp_path, model):
    uri = recording(tmp_path / "c.wav", seconds=30.0)
    rows = rows_for("mix", uri, n=21)
    rows[4] = UtteranceRow("mix", 4, "A", uri, 3.0, 2.0)  # reversed: a manifest problem
    rows[13] = UtteranceRow("mix", 13, "B", uri, 41.0, 42.5)  # past the end of the recording
    summary = make_worker(tmp_path, model).label("mix", rows)
    assert (summary["status"], summary["utterances"], summary["error_rows"]) == ("labeled", 19, 2)
    emotions = read_run_table(str(tmp_path / "out"), EMOTIONS).to_pylist()
    errors = read_run_table(str(tmp_path / "out"), ERRORS).to_pylist()
    assert [r["utterance_index"] for r in emotions] == [i for i in range(21) if i not in (4, 13)]
    assert [(e["utterance_index"], e["error_type"]) for e in errors] == [
        (4, "ManifestError"),
        (13, "SegmentError"),
    ]
    # Every row of a conversation whose recording cannot be decoded fails (shared recording).
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"fLaC" + bytes(500))
    other = make_worker(tmp_path, EmotionModel.random(seed=0))  # a worker owns its model
    failed = other.label("broken", rows_for("broken", str(broken)))
    assert failed["status"] == "failed" and failed["error_rows"] == 3


def test_long_user_segments_are_chunked_and_vad_regions_cut(tmp_path):
    model = EmotionModel.random(seed=0, max_context=64)  # 61 tokens = 2.44 s read whole
    uri = recording(tmp_path / "long.wav", seconds=8.0)
    timed = [UtteranceRow("t", 0, "A", uri, 0.0, 6.0), UtteranceRow("t", 1, "B", uri, 6.0, 7.0)]
    worker = make_worker(tmp_path, model)
    summary = worker.label("t", timed)
    assert (summary["status"], summary["chunked"], summary["split_segments"]) == ("labeled", 1, 0)
    rows = read_run_table(str(tmp_path / "out"), EMOTIONS).to_pylist()
    assert [(r["chunks"], r["truncated"]) for r in rows] == [(3, False), (1, False)]
    assert worker.max_segment_s == pytest.approx(61 / 25)


def test_prefetch_reads_next_conversation_in_background(tmp_path, model):
    first = recording(tmp_path / "a.wav", seed=1)
    second = recording(tmp_path / "b.wav", seed=2)
    worker = make_worker(tmp_path, model)
    s1 = worker.label("a", rows_for("a", first), next_conversation=("b", rows_for("b", second)))
    s2 = worker.label("b", rows_for("b", second))
    assert "read_s" in s1["timings"]
    assert "prefetch_wait_s" in s2["timings"] and "read_s" not in s2["timings"]
    assert s2["status"] == "labeled"
    # A prefetched conversation whose audio is bad still fails cleanly when it comes up.
    s3 = worker.label(
        "b",
        rows_for("b", second),
        next_conversation=("x", rows_for("x", str(tmp_path / "missing.wav"))),
    )
    s4 = worker.label("x", rows_for("x", str(tmp_path / "missing.wav")))
    assert s3["status"] == "labeled" and s4["status"] == "failed"


def test_model_and_run_labels_must_match(tmp_path, model):
    with pytest.raises(LabelError):
        make_worker(tmp_path, model, labels=("neutral", "happy", "sad", "angry", "fear"))


def test_settings_validate():
    with pytest.raises(ConfigError, match="torch_threads"):
        WorkerSettings("out", run_info(), torch_threads=0)
    with pytest.raises(ConfigError, match="mode"):
        WorkerSettings("out", run_info(mode="window"), labeling=LabelingConfig(mode="dpm"))


def test_a_calibrated_model_writes_tempered_probabilities_and_the_same_labels(tmp_path):
    """The table ``dpm label`` writes gets the temperature that ``dpm eval`` applies (both
    label through the SlotLabeler); the summary carries what the run checks read."""
    from dpm_worker.model import Calibration, apply_temperature

    uri = recording(tmp_path / "c.wav", seconds=6.0)
    tables = {}
    for name, calibration in (("plain", None), ("hot", Calibration(4.0))):
        model = EmotionModel.random(seed=0)
        model.calibration = calibration
        summary = make_worker(tmp_path / name, model).label("c", rows_for("c", uri, n=5))
        tables[name] = read_run_table(str(tmp_path / name / "out"), EMOTIONS).to_pylist()
        assert sum(summary["label_counts"].values()) == 5
        confidence = sum(r["confidence"] for r in tables[name])
        assert summary["confidence_sum"] == pytest.approx(confidence, rel=1e-6)
    columns = [f"p_{label}" for label in DEFAULT_LABELS]
    plain = np.array([[r[c] for c in columns] for r in tables["plain"]])
    hot = np.array([[r[c] for c in columns] for r in tables["hot"]])
    np.testing.assert_allclose(hot, apply_temperature(plain, 4.0), atol=1e-6)
    assert [r["emotion"] for r in tables["hot"]] == [r["emotion"] for r in tables["plain"]]
    assert [r["confidence"] for r in tables["hot"]] == pytest.approx(hot.max(axis=1).tolist())
