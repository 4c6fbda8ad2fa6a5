"""``dpm bench e2e`` through the real Ray job: the shipped model and a tiny one take turns on a
tiny corpus with 1 and 2 slots per actor (the bench's smoke test: it must not break silently
when the model changes)."""

from __future__ import annotations

import json

import pytest

from pipelines.bench.e2e import STAGES
from pipelines.cli import main

pytestmark = pytest.mark.integration


def test_two_models_in_turns_through_the_job(ray_address, tiny_corpus, tiny_model, tmp_path):
    out = tmp_path / "e2e.json"
    code = main(
        [
            "bench", "e2e", "--corpus", str(tiny_corpus), "--models", f"default,{tiny_model}",
            "--slots", "1,2", "--repeats", "1", "--actors", "1", "--cpus-per-actor", "0.5",
            "--workdir", str(tmp_path / "work"), "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["models"] == ["default", tiny_model]
    assert report["audio_hours"] > 0 and report["utterances"] > 0
    for slots in ("1", "2"):
        rates = {m: report["runs"][m][slots]["audio_hours_per_hour"] for m in report["models"]}
        assert all(rate > 0 for rate in rates.values())
        assert report["ratio_to_first"][slots] == {
            "default": 1.0,
            tiny_model: pytest.approx(rates[tiny_model] / rates["default"], abs=1e-3),
        }
        for model in report["models"]:
            profile = report["runs"][model][slots]["profile"]
            assert set(profile["seconds"]) == set(STAGES)
            # every stage but segment ran (the synthetic rows have times: no VAD)
            for stage in ("decode", "encode", "llm", "memory", "write"):
                assert profile["seconds"][stage] > 0, (model, slots, stage)
        # the shipped model's tokenizer codes its encoder states in a second call
        assert report["runs"]["default"][slots]["profile"]["seconds"]["units"] > 0
    # each run wrote its own tables
    assert len(list((tmp_path / "work").glob("r0-s*-*/emotions"))) == 4
