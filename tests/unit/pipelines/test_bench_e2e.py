"""``dpm bench e2e``'s arithmetic on scripted job results (no Ray) and its argument checks;
tests/integration/test_bench_e2e.py runs it through the real job."""

from __future__ import annotations

import argparse

import pytest

from dpm_worker.errors import DpmError
from pipelines.bench.e2e import STAGES, add_arguments, report
from pipelines.cli import main


def job(schedule_s: float, wall_s: float = 30.0, audio_s: float = 360.0, **stages) -> dict:
    """What ``throughput.on_ray`` returns, scripted."""
    return {
        "exit_code": 0,
        "wall_s": wall_s,
        "ray_start_s": 0.0,
        "actors_start_s": 5.0,
        "schedule_s": schedule_s,
        "actor_stage_s": {f"{k}_s": v for k, v in stages.items()},
        "utterances": 100,
        "audio_s": audio_s,
    }


def args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--corpus", "c", "--models", "a,b", *extra])


def test_rates_ratios_and_profile_follow_from_the_runs() -> None:
    runs = {
        "a": {1: [job(36.0), job(40.0), job(30.0)], 8: [job(18.0)] * 3},
        "b": {1: [job(18.0), job(20.0), job(24.0)], 8: [job(12.0, encode=6.0, memory=0.9)] * 3},
    }
    out = report(args(), ["a", "b"], [1, 8], runs)
    # 360 s of audio = 0.1 h; the median labeling phase of a at 1 slot is 36 s = 0.01 h
    assert out["runs"]["a"]["1"]["audio_hours_per_hour"] == pytest.approx(10.0)
    assert out["runs"]["b"]["1"]["audio_hours_per_hour"] == pytest.approx(18.0)
    assert out["runs"]["b"]["8"]["audio_hours_per_hour_job"] == pytest.approx(12.0)
    assert out["ratio_to_first"] == {"1": {"a": 1.0, "b": 1.8}, "8": {"a": 1.0, "b": 1.5}}
    profile = out["runs"]["b"]["8"]["profile"]
    assert set(profile["seconds"]) == set(STAGES)
    assert profile["seconds"]["encode"] == 6.0 and profile["seconds"]["decode"] == 0.0
    assert profile["per_audio_s"]["encode"] == pytest.approx(6.0 / 360.0, abs=1e-4)
    assert out["audio_hours"] == pytest.approx(0.1)


def test_runs_that_labeled_different_audio_are_refused() -> None:
    runs = {"a": {1: [job(10.0)]}, "b": {1: [job(10.0, audio_s=300.0)]}}
    with pytest.raises(DpmError, match="different"):
        report(args(), ["a", "b"], [1], runs)


@pytest.mark.parametrize(
    "bad", [["--models", "a,a"], ["--slots", "0,8"], ["--slots", "x"], ["--repeats", "0"]]
)
def test_bad_arguments_exit_2_before_any_cluster(bad: list[str]) -> None:
    assert main(["bench", "e2e", "--corpus", "c", "--models", "a,b", *bad]) == 2
