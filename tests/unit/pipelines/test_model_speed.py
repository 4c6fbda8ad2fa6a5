"""``dpm bench model_speed``: models take turns on the same corpus; speeds and ratios."""

from __future__ import annotations

import json

import pytest

from dpm_worker.corpus import read_ravdess, write_manifest
from dpm_worker.model import default_model_path
from pipelines.cli import main
from tests.fixtures.corpus_trees import build_ravdess_tree


def test_two_models_take_turns_on_one_corpus(tmp_path):
    root = build_ravdess_tree(tmp_path, actors=(3,))
    table, _ = read_ravdess(str(root))
    write_manifest(table, str(tmp_path / "m.parquet"))
    out = tmp_path / "speed.json"
    models = f"default,{default_model_path()}"
    code = main(["bench", "model_speed", "--corpus", str(tmp_path / "m.parquet"),
                 "--models", models, "--mode", "utterance", "--repeats", "2",
                 "--json", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    # 36 takes of 0.3 s, each padded to whole 40 ms blocks
    assert report["audio_hours"] * 3600 == pytest.approx(36 * 0.32, rel=0.01)
    first, second = report["models"].values()
    assert first["speed_ratio_to_first"] == 1.0
    for block in (first, second):
        assert len(block["seconds"]) == 2 and block["audio_hours_per_hour"] > 0
        stages = block["stage_seconds"]
        assert set(stages) == {"read", "tokenize", "label"}
        assert 0 < sum(stages.values()) <= max(block["seconds"]) + 1e-3
    assert second["model_id"] == first["model_id"]


def test_bad_arguments_exit_2(tmp_path):
    assert main(["bench", "model_speed", "--corpus", "x", "--models", "default",
                 "--repeats", "0"]) == 2  # fmt: skip
