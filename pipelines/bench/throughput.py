"""``dpm bench throughput``: the Ray job against the in-process loop on the same corpus.

Both sides label the same conversations with the same model and mode:

- in-process: ``dpm eval``'s loop (``pipelines.eval.evaluate``) in this process: read + tokenize
  every conversation, then label them one after the other, with as many torch threads as one
  actor has (``--in-process-threads``);
- Ray: ``dpm label`` on an embedded local Ray (or ``--address``) with ``--actors`` actors,
  including Ray's start, the actors' model loading, and writing the Parquet tables.

``--slots 1,8`` instead measures the batched engine per K in-process
(:mod:`pipelines.bench.slots`).

Reported: wall times, the ratio, and where the time goes (Ray start, actor start, the
scheduling phase, and the actors' own per-stage seconds: read, tokenize, label, write).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time

import torch

from pipelines.bench.slots import add_slot_arguments, run_slots

log = logging.getLogger("dpm.bench")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", help="corpus folder or manifest (default: generate one)")
    parser.add_argument("--conversations", type=int, default=6, help="generated conversations")
    parser.add_argument("--min-utterances", type=int, default=10)
    parser.add_argument("--max-utterances", type=int, default=16)
    parser.add_argument("--model", help="model folder (default: the packaged model)")
    parser.add_argument("--mode", default="dpm", choices=("utterance", "window", "full", "dpm"))
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--address", help="Ray cluster (default: embedded local Ray)")
    parser.add_argument(
        "--in-process-threads",
        type=int,
        help="torch threads of the in-process loop (default: an actor's, so the comparison is "
        "per worker; more threads than free cores slow small models down several-fold)",
    )
    parser.add_argument("--workdir", help="where the corpus and tables go (default: temp dir)")
    add_slot_arguments(parser)


def in_process(corpus: str, model_uri: str | None, mode: str, threads: int) -> dict:
    from dpm_worker.memory import LabelingConfig
    from dpm_worker.model import load_model
    from pipelines.eval import label_conversations, load_conversations

    torch.set_num_threads(threads)
    start = time.monotonic()
    model = load_model(model_uri)
    loaded = time.monotonic()
    conversations = load_conversations(corpus, model)
    tokenized = time.monotonic()
    result = label_conversations(model, conversations, LabelingConfig(mode=mode))
    done = time.monotonic()
    n = len(result.pred)
    return {
        "wall_s": round(done - start, 2),
        "model_load_s": round(loaded - start, 2),
        "read_tokenize_s": round(tokenized - loaded, 2),
        "label_s": round(done - tokenized, 2),
        "utterances": n,
        "utterances_per_s": round(n / (done - start), 2),
        "torch_threads": torch.get_num_threads(),
    }


def on_ray(corpus: str, model_uri: str | None, mode: str, args: argparse.Namespace) -> dict:
    from pipelines.label import connect, load_config, prepare

    config = load_config(
        None,
        {
            "input": corpus,
            "output": os.path.join(args.workdir, "tables"),
            "model": model_uri,
            "labeling.mode": mode,
            "address": args.address,
            "actors": args.actors,
            "cpus_per_actor": args.cpus_per_actor,
        },
        ["progress_interval_s=15"],
    )
    start = time.monotonic()
    connect(config)
    ray_up = time.monotonic()
    job = prepare(config)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON report
        code = job.execute()
    done = time.monotonic()
    progress = job.progress
    return {
        "exit_code": code,
        "wall_s": round(done - start, 2),
        "ray_start_s": round(ray_up - start, 2),
        "actors_start_s": round(job.timings.get("actors_s", 0.0), 2),
        "schedule_s": round(job.timings.get("schedule_s", 0.0), 2),
        "actor_stage_s": {k: round(v, 2) for k, v in sorted(progress.stage_s.items())},
        "utterances": progress.utterances,
        "utterances_per_s": round(progress.utterances / (done - start), 2),
        "steady_utterances_per_s": round(
            progress.utterances / max(job.timings.get("schedule_s", 0.0), 1e-6), 2
        ),
        "actors": args.actors,
        "cpus_per_actor": args.cpus_per_actor,
    }


def run(args: argparse.Namespace) -> int:
    if args.slots:  # the batched engine per K, in-process (pipelines.bench.slots)
        print(json.dumps(run_slots(args), indent=2))
        return 0
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="dpm-bench-throughput-")
    corpus = args.corpus
    if corpus is None:
        from dpm_worker.corpus import SynthConfig, generate_corpus

        corpus = os.path.join(args.workdir, "corpus")
        generate_corpus(
            corpus,
            SynthConfig(
                conversations=args.conversations,
                seed=5,
                min_utterances=args.min_utterances,
                max_utterances=args.max_utterances,
            ),
        )
    threads = args.in_process_threads or max(1, int(args.cpus_per_actor))
    local = in_process(corpus, args.model, args.mode, threads)
    ray_side = on_ray(corpus, args.model, args.mode, args)
    report = {
        "benchmark": "throughput",
        "corpus": corpus,
        "mode": args.mode,
        "cpus": os.cpu_count(),
        "in_process": local,
        "ray": ray_side,
        "ratio_wall_ray_over_in_process": round(ray_side["wall_s"] / local["wall_s"], 3),
        "ratio_steady_ray_over_in_process_labeling": round(
            ray_side["schedule_s"] / max(local["read_tokenize_s"] + local["label_s"], 1e-6), 3
        ),
    }
    print(json.dumps(report, indent=2))
    return 0 if ray_side["exit_code"] == 0 else 1
