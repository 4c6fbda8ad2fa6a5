import pytest

from dpm_worker.errors import ConfigError
from pipelines.config import parse_override
from pipelines.label import load_config, public_config, strip_userinfo


def test_yaml_then_flags_then_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "input: in.parquet\noutput: out\nactors: 4\n"
        "labeling:\n  mode: window\n  window_tokens: 128\n  memory:\n    lr: 0.01\n"
    )
    config = load_config(
        str(path),
        {"actors": 2, "labeling.mode": None},
        [
            "labeling.memory.lr=5e-4",
            "labeling.memory.betas=[0.8, 0.9]",
            "in_flight_per_actor=3",
            "slots_per_actor=4",
            "labeling.history_cache=reuse",
        ],
    )
    assert config.actors == 2  # flag beats the file
    assert config.labeling.mode == "window"  # a flag that was not given changes nothing
    assert config.labeling.window_tokens == 128
    assert config.labeling.memory.lr == pytest.approx(5e-4)
    assert config.labeling.memory.betas == (0.8, 0.9)
    assert config.in_flight_per_actor == 3
    assert config.slots_per_actor == 4
    assert config.labeling.history_cache == "reuse"
    assert config.calls_per_actor == 6  # 4 in the slots, 2 waiting with their audio read


def test_slots_per_actor_flag_and_help(capsys):
    import argparse

    from pipelines.label_corpus import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--slots-per-actor", "3"])
    config = load_config(None, {"input": "in", "output": "out", "slots_per_actor": 3}, [])
    assert args.slots_per_actor == 3 and config.slots_per_actor == 3
    assert "batched across them" in parser.format_help()


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["labeling.memory.nope=1"], "unknown config key"),
        (["actors=0"], "actors must be >= 1"),
        (["labeling.mode=magic"], "mode must be one of"),
        (["cpus_per_actor=abc"], "wrong type"),
        (["novalue"], "section.key=value"),
        (["run_id=../x"], "run id"),
        (["slots_per_actor=0"], "slots_per_actor must be in \\[1, 1024\\], got 0"),
        (["labeling.history_cache=keep"], "history_cache must be one of .* got 'keep'"),
    ],
)
def test_bad_values_are_rejected_with_the_value(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, {"input": "in", "output": "out"}, overrides)


def test_input_and_output_are_required():
    with pytest.raises(ConfigError, match="--input"):
        load_config(None, {"output": "out"}, [])


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=1e-3") == ("a.b", 1e-3)
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])


def test_credentials_in_uris_are_stripped():
    assert strip_userinfo("s3://key:secret@bucket/x") == "s3://***@bucket/x"
    config = load_config(None, {"input": "s3://k:s@b/in", "output": "/tmp/o"}, [])
    assert "s@" not in public_config(config)["input"]


def test_shipped_yaml_loads_with_the_defaults():
    from pathlib import Path

    from pipelines.label import LabelJobConfig

    path = Path(__file__).resolve().parents[3] / "pipelines" / "configs" / "label_default.yaml"
    config = load_config(str(path), {"input": "in", "output": "out"}, [])
    defaults = LabelJobConfig(input="in", output="out")
    assert config == defaults
