"""The one config loader (pipelines.config) and the commands that read their settings with it."""

import argparse
import subprocess
import sys

import pytest

from dpm_worker.errors import ConfigError
from pipelines.config import add_config_arguments, check_sections, merge_tree


def test_the_loader_imports_no_torch():
    code = "import sys, pipelines.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_file_then_flags_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("labeling:\n  window_tokens: 64\n  memory: {lr: 0.01, rank: 4}\n")
    tree = merge_tree(
        str(path),
        {"labeling.window_tokens": 32, "labeling.history_labels": None},
        ["labeling.memory.lr=1e-4", "labeling.memory.write_target=audio"],
    )
    assert tree == {
        "labeling": {
            "window_tokens": 32,
            "memory": {"lr": 1e-4, "rank": 4, "write_target": "audio"},
        }
    }


def test_unknown_sections_are_named_with_the_known_ones():
    with pytest.raises(ConfigError, match="labelling.*known: labeling"):
        check_sections({"labelling": {}}, ("labeling",))


def test_every_command_shows_the_override_syntax_and_its_sections():
    from pipelines import label_corpus
    from pipelines.bench import memory as bench_memory
    from pipelines.eval import evaluate
    from pipelines.train import backbone

    for module, section in (
        (label_corpus, "labeling.memory"),
        (evaluate, "labeling.memory"),
        (bench_memory, "labeling.memory"),
        (backbone, "memory_loop"),
    ):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        text = " ".join(parser.format_help().split())
        assert "KEY=VALUE" in text and "--config" in text and section in text, module


def test_eval_reads_the_labeling_section_and_overrides(tmp_path):
    from pipelines.eval import add_labeling_arguments, load_labeling_config

    parser = argparse.ArgumentParser()
    parser.add_argument("--window-tokens", type=int)
    add_labeling_arguments(parser)
    path = tmp_path / "label.yaml"
    path.write_text("labeling:\n  window_tokens: 64\n  memory: {optimizer: sgd}\n")
    args = parser.parse_args(
        [
            "--config",
            str(path),
            "labeling.memory.write_target=audio",
            "labeling.memory.optimizer=adamw",
            "labeling.memory.lr=1e-4",
        ]
    )
    config = load_labeling_config(args, {"labeling.window_tokens": args.window_tokens})
    assert (config.window_tokens, config.memory.write_target) == (64, "audio")
    assert (config.memory.optimizer, config.memory.lr) == ("adamw", pytest.approx(1e-4))
    args = parser.parse_args(["--window-tokens", "16", "labeling.memory.lr=-1"])
    with pytest.raises(ConfigError, match="lr"):
        load_labeling_config(args, {"labeling.window_tokens": args.window_tokens})
    args = parser.parse_args(["input=x"])
    with pytest.raises(ConfigError, match="unknown config section"):
        load_labeling_config(args, {})


def test_train_reads_sections_flags_and_overrides(tmp_path):
    from pipelines.train import load_settings

    path = tmp_path / "t.yaml"
    path.write_text("train: {epochs: 3, lr: 1e-3}\nlora: {r: 8}\n")
    args = argparse.Namespace(
        config=str(path),
        epochs=2.0,
        seed=None,
        max_minutes=None,
        threads=None,
        model_id="m1",
        overrides=["train.lr=3e-4", "lora.alpha=16"],
        device=None,
        workers=None,
        address=None,
    )
    settings = load_settings(args)
    assert settings["train"].epochs == 2.0  # the flag beats the file
    assert settings["train"].lr == pytest.approx(3e-4)  # the override beats both
    assert (settings["lora"].r, settings["lora"].alpha) == (8, 16)
    assert settings["model"].model_id == "m1"
    assert settings["model"].max_context == settings["train"].window_tokens
    args.overrides = ["optimizer.lr=1"]
    with pytest.raises(ConfigError, match="optimizer"):
        load_settings(args)


def test_add_config_arguments_lists_the_sections():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, {"alpha": "first", "beta": "second"}, "alpha.x=1")
    text = " ".join(parser.format_help().split())
    assert "alpha: first; beta: second" in text and "alpha.x=1" in text


def test_train_reads_the_distributed_section_only_with_workers(tmp_path):
    from pipelines.train import load_settings

    path = tmp_path / "t.yaml"
    path.write_text("train: {device: cpu}\ndistributed: {cpus_per_worker: 0.5, strategy: fsdp}\n")
    args = argparse.Namespace(
        config=str(path), epochs=None, seed=None, max_minutes=None, threads=None, model_id=None,
        overrides=["distributed.checkpoint_every=3"], device=None, workers=None, address=None,
    )  # fmt: skip
    assert load_settings(args)["distributed"] is None
    args.workers = 2
    dist = load_settings(args)["distributed"]
    assert (dist.workers, dist.cpus_per_worker, dist.strategy) == (2, 0.5, "fsdp")
    assert dist.checkpoint_every == 3
    args.overrides = ["distributed.strategy=zero3"]
    with pytest.raises(ConfigError, match="zero3"):
        load_settings(args)


@pytest.mark.parametrize(
    "name", ["train_paper_llama.yaml", "train_smoke.yaml", "train_memory_loop.yaml"]
)
def test_shipped_train_configs_load(name):
    from pathlib import Path

    from pipelines.train import load_settings

    path = Path(__file__).resolve().parents[3] / "pipelines" / "configs" / name
    args = argparse.Namespace(
        config=str(path), epochs=None, seed=None, max_minutes=None, threads=None, model_id=None,
        overrides=[], device=None, workers=2, address=None,
    )  # fmt: skip
    settings = load_settings(args)
    if name == "train_paper_llama.yaml":  # the paper's recipe
        assert (settings["lora"].r, settings["lora"].alpha, settings["train"].lr) == (64, 64, 5e-5)
        assert settings["train"].audio_weight == settings["train"].emotion_weight == 0.5
    if name == "train_memory_loop.yaml":  # order 2 through the default memory's writes
        assert (settings["memory_loop"].order, settings["memory_loop"].truncate_writes) == (2, 2)
        assert settings["memory"].write_target == "prior"
    assert settings["distributed"].workers == 2
