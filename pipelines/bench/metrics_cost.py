"""``dpm bench throughput --metrics-cost R``: the Ray job with Prometheus metrics on and off.

Runs ``dpm label``'s job R times with ``metrics=true`` and R times with ``metrics=false`` on the
same corpus, model and cluster, interleaved (off/on, then on/off, ...) so that a drift of the
machine's load hits both sides alike; each run writes its own tables. Printed JSON::

    {"metrics_cost": {"on": {"schedule_s": [...], "wall_s": [...], ...}, "off": {...},
     "ratio_schedule_on_over_off": Q, "ratio_wall_on_over_off": W,
     "ratio_actor_total_on_over_off": A,
     "record_call_us": {"histogram": H, "counter": C, "gauge": G},
     "record_calls": N, "record_share_of_schedule": S}}

``schedule_s`` is the labeling phase (actors already up), the quantity metrics could slow down;
``actor_total_s`` the actors' own seconds inside ``label`` (summed over conversations); the
ratios are of the medians. ``record_call_us`` is the cost of one ``record`` call through the
real ``ray.util.metrics`` objects in this (connected) process, and ``record_share_of_schedule``
bounds the actors' share from above: every call of the run as if made one after the other
(actors run in parallel), over the labeling phase. On a loaded machine the side-by-side ratio
is noise-bound; the bound says what the metrics themselves cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from dpm_worker import telemetry
from dpm_worker.errors import DpmError

RunSide = Callable[[bool, str], dict[str, Any]]


def add_metrics_cost_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-cost",
        type=int,
        metavar="R",
        help="run the Ray job R times with metrics on and R times off (interleaved) and "
        "report the ratio of the labeling phase's medians (no in-process side)",
    )


def record_call_us(calls: int = 20000) -> dict[str, float]:
    """Microseconds per ``record`` call through Ray's metric objects (Ray must be connected)."""
    from pipelines.label.metrics import ActorRecorder

    recorder = ActorRecorder("bench-metrics-cost", "bench")
    out = {}
    for kind, name, value in (
        ("histogram", telemetry.STEP_S, 0.1),
        ("counter", telemetry.CHECKPOINT, 1.0),
        ("gauge", telemetry.SLOTS_OCCUPIED, 3.0),
    ):
        recorder(name, value)  # the metric object is made on first use: not timed
        start = time.perf_counter()
        for _ in range(calls):
            recorder(name, value)
        out[kind] = round((time.perf_counter() - start) / calls * 1e6, 3)
    return out


def run_metrics_cost(rounds: int, workdir: str, run_side: RunSide) -> dict[str, Any]:
    """``run_side(metrics, output)`` runs the job once; returns the report's ``metrics_cost``."""
    sides: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for i in range(rounds):
        for metrics in (False, True) if i % 2 == 0 else (True, False):
            side = "on" if metrics else "off"
            result = run_side(metrics, os.path.join(workdir, f"tables-{side}-{i}"))
            if result["exit_code"] != 0:
                raise DpmError(f"metrics {side} run {i} exited {result['exit_code']}")
            sides[side].append(result)

    def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "schedule_s": [r["schedule_s"] for r in runs],
            "wall_s": [r["wall_s"] for r in runs],
            "actor_total_s": [r["actor_stage_s"].get("total_s", 0.0) for r in runs],
            "utterances": runs[0]["utterances"],
            "median_schedule_s": statistics.median(r["schedule_s"] for r in runs),
            "median_wall_s": statistics.median(r["wall_s"] for r in runs),
            "median_actor_total_s": statistics.median(
                r["actor_stage_s"].get("total_s", 0.0) for r in runs
            ),
        }

    on, off = summary(sides["on"]), summary(sides["off"])
    costs = record_call_us()
    # Per conversation: read, tokenize, conversation, two slot levels; per utterance: a step
    # (one slot); plus checkpoints, which the runs report through their stages.
    conversations = sides["on"][0]["conversations"]
    calls = on["utterances"] + 5 * conversations
    share = calls * max(costs.values()) / 1e6 / max(on["median_schedule_s"], 1e-9)
    return {
        "rounds": rounds,
        "on": on,
        "off": off,
        "ratio_schedule_on_over_off": round(on["median_schedule_s"] / off["median_schedule_s"], 4),
        "ratio_wall_on_over_off": round(on["median_wall_s"] / off["median_wall_s"], 4),
        "ratio_actor_total_on_over_off": round(
            on["median_actor_total_s"] / max(off["median_actor_total_s"], 1e-9), 4
        ),
        "pairs_schedule_on_over_off": [
            round(a["schedule_s"] / b["schedule_s"], 4)
            for a, b in zip(sides["on"], sides["off"], strict=True)
        ],
        "record_call_us": costs,
        "record_calls": calls,
        "record_share_of_schedule": round(share, 6),
    }
