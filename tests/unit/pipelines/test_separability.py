"""``dpm bench separability``: a classifier cross-validated on one existing corpus, overall and
per split, with the speaker's conversation mean and with the neutral level from the labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dpm_worker.audio import SAMPLE_RATE
from dpm_worker.corpus import SynthConfig, generate_corpus
from pipelines.bench.separability import FEATURES, prosody_features, rich_features
from pipelines.cli import main as cli_main
from pipelines.exit_codes import EXIT_USAGE


def test_separability_of_an_existing_corpus_per_split(tmp_path, capsys) -> None:
    config = SynthConfig(conversations=8, seed=5, min_utterances=30, max_utterances=30)
    generate_corpus(str(tmp_path / "c"), config)
    out = tmp_path / "sep.json"
    code = cli_main(
        ["bench", "separability", "--corpus", str(tmp_path / "c"), "--group-by", "conversation_id",
         "--folds", "4", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["utterances"] == 240
    by = report["by_conversation_id"]
    assert len(by) == 8
    expressive = sum(g["expressive_n"] for g in by.values())
    for name in ("single_utterance", "with_conversation_mean"):
        pooled = sum(g[name] * g["expressive_n"] for g in by.values()) / expressive
        assert pooled == pytest.approx(report[f"expressive_{name}_accuracy"], abs=0.01)
    # espeak's emotions against the speaker's own level are far above chance (0.25)
    assert report["expressive_with_conversation_mean_accuracy"] > 0.5
    assert report["expressive_with_speaker_baseline_accuracy"] > 0.5


def test_separability_needs_a_local_corpus_and_two_folds(tmp_path, capsys) -> None:
    assert cli_main(["bench", "separability", "--corpus", str(tmp_path / "missing")]) == EXIT_USAGE
    assert "expected a local corpus folder" in capsys.readouterr().err
    assert (
        cli_main(["bench", "separability", "--corpus", str(tmp_path), "--folds", "1"]) == EXIT_USAGE
    )
    assert "--folds must be >= 2" in capsys.readouterr().err


def test_rich_features_extend_the_prosodic_ones() -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    wave = (0.3 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    rich = rich_features(wave)
    assert rich[: len(FEATURES)] == prosody_features(wave)
    assert len(rich) == len(FEATURES) + 2 * 40 + 2 * 5 + 3
    assert np.all(np.isfinite(rich))
    assert rich[-2] == pytest.approx(1.0)  # the duration, seconds
