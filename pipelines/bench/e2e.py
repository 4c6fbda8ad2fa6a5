"""``dpm bench e2e``: models side by side through the real Ray job, per slots setting.

Each model labels the same manifest through ``dpm label``'s job (``throughput.on_ray``: the
driver streams the manifest, actors read, segment, tokenize, label and write the Parquet
tables) on one Ray cluster, once per ``--slots`` value (conversations an actor labels at once).
The runs take turns, so a drift of the machine's load falls on every side alike: in each
round every slots setting runs every model, in the order given in even rounds and reversed in
odd ones (A B, B A, ...). Printed JSON, per model and slots setting (medians over the rounds)::

    {"runs": {"MODEL": {"SLOTS": {"audio_hours_per_hour": R, "audio_hours_per_hour_job": J,
                                  "schedule_s": [...], "profile": {...}}}},
     "ratio_to_first": {"SLOTS": {"MODEL": Q}}, "profile_note": "..."}

- ``audio_hours_per_hour``: audio labeled per hour of the labeling phase (actors up: what a
  long corpus converges to); ``audio_hours_per_hour_job``: per hour of the whole job (Ray
  already up; actor start and model loading included, which a few minutes of audio magnify);
- ``ratio_to_first``: a model's ``audio_hours_per_hour`` over the first model's, same slots
  (of the reported medians);
- ``profile``: the actors' seconds per stage, summed over conversations, of the run of median
  rate: ``decode`` (fetch, decode, resample), ``segment`` (VAD, diarization, cuts), ``encode``
  (the speech front end: the encoder or the block features), ``units`` (codes and summaries
  from them), ``llm`` (the batched steps minus the memory's writes: the backbone's reads, the
  head, building rows), ``memory`` (the DPM writes), ``write`` (Parquet); ``per_audio_s`` the
  same over the audio's seconds (a real-time factor per stage). Stages of different threads
  overlap (reads ahead, tokenizing while a batch steps), so they need not add up to the wall.

The bench starts its own local Ray (its own temp dir, every CPU of the machine) unless
``--address`` names a cluster or Ray is connected already; it stops only that cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import tempfile
from collections.abc import Iterator
from typing import Any

from dpm_worker.errors import ConfigError, DpmError
from pipelines.bench.command import print_report
from pipelines.bench.throughput import on_ray

# profile stage -> the summary timings it sums (dpm_worker.worker.ConversationWorker.label)
STAGES = {
    "decode": "decode_s",
    "segment": "segment_s",
    "encode": "encode_s",
    "units": "units_s",
    "llm": "llm_s",
    "memory": "memory_s",
    "write": "write_s",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="manifest file or folder")
    parser.add_argument(
        "--models",
        required=True,
        help="comma-separated model folders; 'default' is the packaged model; the first is the "
        "reference of the ratios",
    )
    parser.add_argument(
        "--slots", default="1,8", help="conversations per actor at once, e.g. 1,8 (%(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds (%(default)s)")
    parser.add_argument("--mode", default="dpm", choices=("utterance", "window", "full", "dpm"))
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument(
        "--cpus-per-actor",
        type=float,
        default=0.5,
        help="Ray CPUs per actor (%(default)s; torch threads: this rounded up)",
    )
    parser.add_argument("--gpus-per-actor", type=float, default=1.0)
    parser.add_argument("--address", help="Ray cluster (default: a local one of this bench)")
    parser.add_argument("--device", help="torch device of the actors (default: CUDA if any)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--workdir", help="where the tables go (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the JSON here")


def run(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        slots = [int(k) for k in args.slots.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--slots must list integers, got {args.slots!r}") from None
    if not models or len(set(models)) != len(models):
        raise ConfigError(f"--models must name distinct models, got {args.models!r}")
    if not slots or min(slots) < 1 or args.repeats < 1:
        raise ConfigError(
            f"--slots must list integers >= 1 and --repeats be >= 1, got {args.slots!r}, "
            f"{args.repeats}"
        )
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="dpm-bench-e2e-")
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {m: {k: [] for k in slots} for m in models}
    with bench_cluster(args.address):
        for round_ in range(args.repeats):
            for k in slots:
                for m in models if round_ % 2 == 0 else models[::-1]:
                    uri = None if m == "default" else m
                    output = os.path.join(args.workdir, f"r{round_}-s{k}-{models.index(m)}")
                    result = on_ray(args.corpus, uri, args.mode, args, False, output, k)
                    if result["exit_code"] != 0:
                        raise DpmError(f"{m} with {k} slots, round {round_}: job failed")
                    runs[m][k].append(result)
    print_report(report(args, models, slots, runs), args.json)
    return 0


def report(
    args: argparse.Namespace,
    models: list[str],
    slots: list[int],
    runs: dict[str, dict[int, list[dict[str, Any]]]],
) -> dict[str, Any]:
    """The JSON report of the runs (module docstring)."""
    labeled = {(r["utterances"], r["audio_s"]) for m in models for k in slots for r in runs[m][k]}
    if len(labeled) != 1:  # every run must label the same corpus, or the rates are not alike
        raise DpmError(f"the runs labeled different utterances and audio: {sorted(labeled)}")
    blocks = {m: {str(k): _block(runs[m][k]) for k in slots} for m in models}
    first = models[0]
    rate = {(m, k): blocks[m][str(k)]["audio_hours_per_hour"] for m in models for k in slots}
    ratios = {
        str(k): {m: round(rate[m, k] / max(rate[first, k], 1e-9), 3) for m in models} for k in slots
    }
    audio_s = runs[first][slots[0]][0]["audio_s"]
    return {
        "benchmark": "e2e",
        "corpus": args.corpus,
        "mode": args.mode,
        "audio_hours": round(audio_s / 3600, 5),
        "utterances": runs[first][slots[0]][0]["utterances"],
        "actors": args.actors,
        "cpus_per_actor": args.cpus_per_actor,
        "device": args.device or "default",
        "dtype": args.dtype or "default",
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "models": models,
        "runs": blocks,
        "ratio_to_first": ratios,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "profile_note": "actor seconds per stage summed over conversations (threads overlap); "
        "llm = batched steps minus the memory's writes; per_audio_s = seconds / audio seconds",
    }


def _block(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One (model, slots) cell: median rates over the rounds, the median run's profile."""
    rates = [r["audio_s"] / max(r["schedule_s"], 1e-6) for r in results]
    job = [r["audio_s"] / max(r["wall_s"] - r["ray_start_s"], 1e-6) for r in results]
    median = sorted(range(len(rates)), key=rates.__getitem__)[len(rates) // 2]
    stage_s = results[median]["actor_stage_s"]
    audio_s = max(results[median]["audio_s"], 1e-9)
    seconds = {name: round(stage_s.get(key, 0.0), 3) for name, key in STAGES.items()}
    return {
        "audio_hours_per_hour": round(statistics.median(rates), 3),
        "audio_hours_per_hour_job": round(statistics.median(job), 3),
        "rates_by_round": [round(r, 2) for r in rates],
        "schedule_s": [r["schedule_s"] for r in results],
        "actors_start_s": [r["actors_start_s"] for r in results],
        "profile": {
            "seconds": seconds,
            "per_audio_s": {k: round(v / audio_s, 4) for k, v in seconds.items()},
        },
    }


@contextlib.contextmanager
def bench_cluster(address: str | None) -> Iterator[None]:
    """A local Ray of this bench (own temp dir, every CPU) for the runs, stopped after; nothing
    when ``address`` is given or Ray is connected already (the job joins that)."""
    import ray

    if address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        yield
        return
    # Workers at the raylet's priority: Ray's default (nice 15) starves the actors beside
    # any other busy process (tests/integration/conftest.py).
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(
        address="local",
        num_cpus=os.cpu_count() or 1,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        _temp_dir=tempfile.mkdtemp(prefix="dpm-e2e-ray-", dir="/tmp"),
        logging_level=logging.WARNING,
    )
    try:
        yield
    finally:
        ray.shutdown()
