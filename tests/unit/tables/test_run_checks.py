"""Run checks: a run out of its depth (label collapse, low confidence) says so, in the
bookkeeping's totals and in the HTML report."""

from __future__ import annotations

import pytest

from dpm_worker.errors import ConfigError
from dpm_worker.tables import RunChecks, RunTables, read_run, render_html, run_warnings
from pipelines.label.bookkeeping import Progress
from tests.unit.tables.test_report import LABELS, _run_info, _utterances


def test_label_collapse_fires_at_the_share_and_names_the_label():
    assert run_warnings({"angry": 59, "sad": 41}, 80.0) == []
    [warning] = run_warnings({"angry": 60, "sad": 40}, 80.0)
    assert warning.kind == "label_collapse" and warning.figure == pytest.approx(0.6)
    assert "'angry' is 60%" in warning.message and "dpm calibrate" in warning.message
    assert warning.threshold == 0.6 and warning.to_dict()["kind"] == "label_collapse"
    # the threshold is configuration; 1.0 warns only when a single label was emitted
    assert run_warnings({"angry": 99, "sad": 1}, 80.0, RunChecks(label_share=1.0)) == []
    assert len(run_warnings({"angry": 100}, 80.0, RunChecks(label_share=1.0))) == 1


def test_low_confidence_fires_below_the_mean_and_small_runs_never_warn():
    even = {"neutral": 25, "happy": 25, "sad": 25, "angry": 25}
    assert run_warnings(even, 50.0) == []  # mean 0.5 is not below 0.5
    [warning] = run_warnings(even, 49.0)
    assert warning.kind == "low_confidence" and warning.figure == pytest.approx(0.49)
    assert "0.490" in warning.message and "docs/operations.md" in warning.message
    kinds = [w.kind for w in run_warnings({"sad": 100}, 30.0)]
    assert kinds == ["label_collapse", "low_confidence"]
    assert run_warnings({"sad": 19}, 1.0) == []  # fewer than min_utterances
    assert run_warnings({"sad": 5}, 1.0, RunChecks(min_utterances=5)) != []
    assert (
        run_warnings({"sad": 99, "a": 1}, 1.0, RunChecks(label_share=1.0, mean_confidence=0)) == []
    )
    for bad in ({"label_share": 0}, {"label_share": 1.5}, {"mean_confidence": -0.1},
                {"min_utterances": 0}):  # fmt: skip
        with pytest.raises(ConfigError):
            RunChecks(**bad)


def test_the_bookkeeping_adds_the_conversations_up():
    progress = Progress()
    base = {"status": "labeled", "utterances": 10, "error_rows": 0, "rows": 10, "audio_s": 1.0}
    progress.add({**base, "label_counts": {"angry": 9, "sad": 1}, "confidence_sum": 9.0})
    progress.add({**base, "label_counts": {"angry": 8, "happy": 2}, "confidence_sum": 9.0})
    progress.add({**base, "status": "failed", "utterances": 0})  # no labels of its own
    assert progress.label_counts == {"angry": 17, "sad": 1, "happy": 2}
    [warning] = progress.warnings(RunChecks())
    assert warning.kind == "label_collapse" and warning.figure == pytest.approx(0.85)
    assert progress.warnings(RunChecks(label_share=0.9)) == []


def _collapsed_run(out: str, checks: dict | None) -> None:
    """A committed-looking run whose 30 rows are all one label, with confidence 0.9."""
    import datetime as dt

    import numpy as np

    run = _run_info("run-c")
    tables = RunTables(out, run)
    record = {"run_id": "run-c", "run_date": run.run_date, "labels": list(LABELS)}
    if checks is not None:
        record["config"] = {"checks": checks}
    tables.write_record("run.json", record)
    rows = _utterances(30, np.random.default_rng(0), gold=False)
    rows = [
        type(r)(r.utterance, "sad", 0.9, np.array([0.05, 0.025, 0.9, 0.025], np.float32))
        for r in rows
    ]
    tables.write_emotions("call", rows, labeled_at=dt.datetime(2026, 11, 26, tzinfo=dt.UTC))


def test_the_report_flags_a_collapsed_run_with_its_configured_thresholds(tmp_path):
    _collapsed_run(str(tmp_path / "a"), None)
    document = render_html(read_run(str(tmp_path / "a"), "run-c"))
    assert '<section id="warnings">' in document
    assert document.index('id="warnings"') < document.index('id="summary"')
    assert "label collapse: &#x27;sad&#x27; is 100%" in document
    # the run's own thresholds (run.json's config.checks) decide
    _collapsed_run(str(tmp_path / "b"), {"label_share": 1.0, "min_utterances": 100})
    document = render_html(read_run(str(tmp_path / "b"), "run-c"))
    assert '<section id="warnings">' not in document
