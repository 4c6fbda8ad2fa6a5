"""``dpm bench throughput --slots``: the model, device and dtype asked for are the ones measured
(the GPU check runs it on a random Llama in bf16)."""

from __future__ import annotations

import json

from pipelines import cli


def test_slots_bench_measures_the_random_model_in_the_dtype_asked(tmp_path, capsys):
    code = cli.main(
        [
            "bench", "throughput", "--slots", "1,2", "--utterances", "2",
            "--utterance-tokens", "6", "--window-tokens", "16", "--random-model", "1x32",
            "--dtype", "bfloat16", "--device", "cpu", "--threads", "1", "--conversations", "2",
            "--workdir", str(tmp_path),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["model"], report["device"], report["dtype"]) == ("1x32", "cpu", "bfloat16")
    assert (tmp_path / "model").is_dir()  # the random Llama was saved and loaded
    assert set(report["slots"]) == {"1", "2"}
    assert report["utterances"] == 2 * 2  # max(K, --conversations) conversations of 2
    assert report["speedup_vs_baseline"]["2"] > 0


def test_slots_bench_runs_on_the_shipped_model_with_its_acoustic_head(capsys):
    """The shipped model reads an acoustic summary beside its codes: the bench's token corpus
    carries summaries of the head's size (it failed on a headed model before)."""
    from dpm_worker.model import load_model

    assert load_model().acoustic_head is not None
    code = cli.main(
        [
            "bench", "throughput", "--slots", "1,2", "--utterances", "2",
            "--utterance-tokens", "6", "--window-tokens", "16", "--threads", "1",
            "--conversations", "2",
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "default" and set(report["slots"]) == {"1", "2"}
