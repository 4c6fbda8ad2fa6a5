"""The five-statistic logistic baseline: speaker-relative features, a fit on one corpus and
scores on another, overall and per group."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from dpm_worker.corpus import SynthConfig, generate_corpus
from pipelines.bench.prosody_baseline import speaker_relative, speaker_relative_running
from pipelines.cli import main as cli_main


def test_speaker_relative_removes_each_speakers_mean_per_conversation() -> None:
    table = pa.table(
        {
            "conversation_id": ["a", "a", "a", "b", "b"],
            "speaker": ["x", "x", "y", "x", "x"],
        }
    )
    x = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 5.0], [7.0, 0.0], [9.0, 2.0]])
    out = speaker_relative(x, table)
    assert out.tolist() == [[-1.0, -5.0], [1.0, 5.0], [0.0, 0.0], [-1.0, -1.0], [1.0, 1.0]]


def test_running_reference_subtracts_the_mean_so_far() -> None:
    """Causal: a row never depends on later rows of its speaker."""
    table = pa.table({"conversation_id": ["a", "a", "a", "b"], "speaker": ["x", "y", "x", "x"]})
    x = np.array([[1.0], [5.0], [3.0], [7.0]])
    assert speaker_relative_running(x, table).tolist() == [[0.0], [0.0], [1.0], [0.0]]
    changed = x.copy()
    changed[2] = 100.0
    assert speaker_relative_running(changed, table)[:2].tolist() == [[0.0], [0.0]]


def test_baseline_trains_on_one_corpus_and_scores_another(tmp_path, capsys) -> None:
    for name, seed in (("train", 1), ("test", 2)):
        config = SynthConfig(conversations=3, seed=seed, min_utterances=14, max_utterances=14)
        generate_corpus(str(tmp_path / name), config)
    out = tmp_path / "baseline.json"
    code = cli_main(
        ["bench", "prosody_baseline", "--train", str(tmp_path / "train"),
         "--test", str(tmp_path / "test"), "--group-by", "speaker", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["test"]["utterances"] == 42
    for block in (report["speaker_normalised"], report["raw"]):
        assert block["n"] == 42
        assert 0.0 <= block["expressive_accuracy"] <= 1.0
        groups = block["by_speaker"]
        assert len(groups) == 6 and sum(g["n"] for g in groups.values()) == 42
        hits = sum(g["wa"] * g["n"] for g in groups.values())
        assert hits == pytest.approx(block["wa"] * 42, abs=0.01)
    # espeak's emotions are loud and clear: a speaker-relative reading beats chance well
    assert report["speaker_normalised"]["expressive_accuracy"] > 0.5
