"""``dpm report``: a self-contained HTML report of one run, from tables written by tables.py."""

from __future__ import annotations

import base64
import datetime as dt
import io
import re

import numpy as np
import pytest
from PIL import Image

from dpm_worker.tables import (
    SECTIONS,
    ErrorRecord,
    RunInfo,
    RunTables,
    read_run,
    split_run_uri,
)
from dpm_worker.utterance import LabeledUtterance, Utterance
from pipelines.cli import main as cli_main

LABELS = ("neutral", "happy", "sad", "angry")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run_info(run_id: str) -> RunInfo:
    return RunInfo(
        run_id=run_id,
        run_date="2026-11-26",
        labels=LABELS,
        mode="dpm",
        model_id="tiny",
        model_fingerprint="f" * 64,
        code_version="test",
    )


def _utterances(n: int, rng: np.random.Generator, gold: bool) -> list[LabeledUtterance]:
    rows = []
    for i in range(n):
        probs = rng.dirichlet(np.ones(len(LABELS)))
        pred = int(np.argmax(probs))
        # Gold agrees with the prediction on even positions only: WA is known exactly.
        gold_label = LABELS[pred] if i % 2 == 0 else LABELS[(pred + 1) % len(LABELS)]
        rows.append(
            LabeledUtterance(
                utterance=Utterance(
                    conversation_id="c",
                    utterance_index=i,
                    speaker="A" if i % 2 == 0 else "B",
                    start_s=2.0 * i,
                    end_s=2.0 * i + 1.5,
                    emotion=gold_label if gold else None,
                ),
                emotion=LABELS[pred],
                confidence=float(probs[pred]),
                probs=probs.astype(np.float32),
            )
        )
    return rows


def _write_run(out: str, run_id: str, sizes: dict[str, int], gold: bool, seed: int) -> RunTables:
    """A run written with the real writer: emotion files, one failed conversation, records."""
    rng = np.random.default_rng(seed)
    run = _run_info(run_id)
    tables = RunTables(out, run)
    tables.write_record(
        "run.json",
        {
            "run_id": run_id,
            "run_date": run.run_date,
            "labels": list(LABELS),
            "mode": "dpm",
            "model_id": "tiny",
            "model_fingerprint": run.model_fingerprint,
        },
    )
    when = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
    for conversation_id, n in sizes.items():
        tables.write_emotions(conversation_id, _utterances(n, rng, gold), labeled_at=when)
    tables.write_errors(
        "broken-call",
        [ErrorRecord("broken-call", None, "AudioError", "recording is empty", "s3://b/x.wav")],
    )
    tables.write_record(
        "_SUCCESS",
        {
            "run_id": run_id,
            "started_at": "2026-11-26T12:00:00+00:00",
            "finished_at": f"2026-11-26T12:{seed:02d}:00+00:00",
            "this_session": {"audio_hours": 0.5, "stage_seconds": {"label_s": 30.0}},
        },
    )
    return tables


@pytest.fixture
def output(tmp_path):
    out = str(tmp_path / "out")
    # Two runs share the partition: the report of one must not count the other's rows.
    _write_run(out, "run-a", {"call-1": 24, "call-2": 9, "call-3": 15}, gold=True, seed=1)
    _write_run(out, "run-b", {"call-9": 5}, gold=False, seed=2)
    return out


def _pngs(document: str) -> list[bytes]:
    return [
        base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', document)
    ]


def test_report_has_every_section_and_valid_embedded_pngs(output, tmp_path):
    target = tmp_path / "report.html"
    assert cli_main(["report", output, "--run-id", "run-a", "--out", str(target)]) == 0
    document = target.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in document, section
    pngs = _pngs(document)
    # per conversation, over position, confidence, confusion matrix, accuracy by position
    assert len(pngs) == 5
    for png in pngs:
        assert png.startswith(PNG_SIGNATURE)
        image = Image.open(io.BytesIO(png))
        image.verify()
        assert image.size[0] > 300 and image.size[1] > 150
    # Self-contained: nothing is fetched from elsewhere when the file is opened.
    assert not re.search(r'(src|href)="(https?:)?//', document)


def test_report_counts_only_its_run_and_scores_gold(output):
    results = read_run(output, "run-a")
    assert len(results.emotions) == 24 + 9 + 15
    assert set(results.emotions["run_id"]) == {"run-a"}
    assert results.labels == LABELS and results.has_gold
    assert len(results.errors) == 1 and results.errors["error_type"].iloc[0] == "AudioError"

    from dpm_worker.tables import gold_metrics, render_html

    metrics = gold_metrics(results.emotions, LABELS)
    correct = sum((n + 1) // 2 for n in (24, 9, 15))  # even positions agree
    assert metrics["n"] == 48 and metrics["wa"] == pytest.approx(correct / 48)
    # Position bins see the even/odd pattern as exactly half right where bins are even-sized.
    assert metrics["by_position"][0]["n"] == 3 * 3 and metrics["by_position"][0]["wa"] > 0.6
    document = render_html(results)
    assert f"{correct / 48:.3f}" in document
    assert "recording is empty" in document and "AudioError" in document
    # _SUCCESS: 0.5 audio hours in 60 s of wall time is 30 audio hours per hour.
    assert "<td>30.00 audio hours per hour</td>" in document
    assert "label_s 30.0 s" in document


def test_report_without_gold_leaves_out_the_gold_section(output, tmp_path):
    target = tmp_path / "b.html"
    assert cli_main(["report", f"{output}/_runs/run-b", "--out", str(target)]) == 0
    document = target.read_text()
    assert '<section id="gold">' not in document
    assert len(_pngs(document)) == 3
    assert "<td>utterances labeled</td><td>5</td>" in document
    assert "<td>conversations labeled</td><td>1</td>" in document


def test_latest_committed_run_is_the_default(output, tmp_path):
    target = tmp_path / "latest.html"
    assert cli_main(["report", output, "--out", str(target)]) == 0
    assert "dpm run run-b" in target.read_text()  # run-b finished last


def test_unknown_run_and_contradicting_run_id_are_usage_errors(output, tmp_path):
    target = str(tmp_path / "x.html")
    assert cli_main(["report", output, "--run-id", "nope", "--out", target]) == 2
    assert cli_main(["report", f"{output}/_runs/run-a", "--run-id", "run-b", "--out", target]) == 2


def test_split_run_uri():
    assert split_run_uri("s3://b/out/_runs/r1") == ("s3://b/out", "r1")
    assert split_run_uri("s3://b/out/_runs/r1/") == ("s3://b/out", "r1")
    assert split_run_uri("/data/out") == ("/data/out", None)
