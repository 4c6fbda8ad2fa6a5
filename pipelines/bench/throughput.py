"""``dpm bench throughput``: the Ray job against the in-process loop on the same corpus.

Both sides label the same conversations with the same model and mode:

- in-process: ``dpm eval``'s loop (``pipelines.eval.evaluate``) in this process: read + tokenize
  every conversation, then label them one after the other, with as many torch threads as one
  actor has (``--in-process-threads``);
- Ray: ``dpm label`` on an embedded local Ray (or ``--address``) with ``--actors`` actors,
  including Ray's start, the actors' model loading, and writing the Parquet tables.

``--slots 1,8`` instead measures the batched engine per K in-process
(:mod:`pipelines.bench.slots`); ``--metrics-cost R`` runs the Ray side R times with the
Prometheus metrics on and R times off (:mod:`pipelines.bench.metrics_cost`).

Reported: wall times, the ratio, and where the time goes (Ray start, actor start, the
scheduling phase, and the actors' own per-stage seconds: read, tokenize, label, write).

``--device``/``--dtype`` choose where and in which precision the backbone runs on both sides
(``--device cuda --dtype bfloat16`` on a GPU; a bf16 backbone also runs on CPU). With
``--random-model LAYERSxWIDTH`` a random Llama of that shape is saved into the work folder and
benchmarked instead of ``--model`` (e.g. ``24x2048``, a realistic 1B-class shape).
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

from pipelines.bench.metrics_cost import add_metrics_cost_arguments, run_metrics_cost
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
    parser.add_argument("--device", help="torch device, e.g. cuda or cpu (default: CUDA if any)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="backbone dtype (default: bfloat16 on CUDA, else float32)",
    )
    parser.add_argument(
        "--random-model",
        metavar="LAYERSxWIDTH",
        help="benchmark a random Llama of this shape (saved into the work folder)",
    )
    parser.add_argument(
        "--gpus-per-actor", type=float, default=1.0, help="GPUs per actor on a GPU machine"
    )
    parser.add_argument(
        "--in-process-only", action="store_true", help="skip the Ray side (no cluster started)"
    )
    add_metrics_cost_arguments(parser)
    add_slot_arguments(parser)


def save_random_model(shape: str, folder: str) -> str:
    """Save a random Llama of ``LAYERSxWIDTH`` (heads of width 64 or less) into ``folder``."""
    from dpm_worker.errors import ConfigError
    from dpm_worker.model import EmotionModel, save_model

    try:
        layers, width = (int(x) for x in shape.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--random-model must look like 24x2048, got {shape!r}") from None
    heads = max(1, width // 128) if width >= 512 else max(1, width // 16)
    model = EmotionModel.random(hidden=width, layers=layers, heads=heads, max_context=2048)
    # Saved in bf16: half the bytes to write and read; loading casts to the asked dtype.
    model.model.to(torch.bfloat16)  # type: ignore[arg-type]  # transformers' typed .to
    save_model(model, folder)
    return folder


def in_process(
    corpus: str,
    model_uri: str | None,
    mode: str,
    threads: int,
    device: str | None = None,
    dtype: str | None = None,
) -> dict:
    from dpm_worker.memory import LabelingConfig
    from dpm_worker.model import load_model
    from pipelines.eval import label_conversations, load_conversations

    torch.set_num_threads(threads)
    start = time.monotonic()
    model = load_model(model_uri, device=device, dtype=dtype)
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
        "device": str(model.device),
        "dtype": str(next(model.model.parameters()).dtype).removeprefix("torch."),
    }


def on_ray(
    corpus: str,
    model_uri: str | None,
    mode: str,
    args: argparse.Namespace,
    metrics: bool = True,
    output: str | None = None,
    slots: int | None = None,
) -> dict:
    """One ``dpm label`` job on ``corpus`` (``slots``: conversations per actor at once, None:
    the job's default); its wall time, phases, rates and the actors' per-stage seconds."""
    from pipelines.label import connect, load_config, prepare

    flags = {"slots_per_actor": slots} if slots is not None else {}
    config = load_config(
        None,
        {
            **flags,
            "input": corpus,
            "output": output or os.path.join(args.workdir, "tables"),
            "metrics": metrics,
            "model": model_uri,
            "labeling.mode": mode,
            "address": args.address,
            "actors": args.actors,
            "cpus_per_actor": args.cpus_per_actor,
            "gpus_per_actor": args.gpus_per_actor,
            "device": args.device,
            "dtype": args.dtype,
        },
        ["progress_interval_s=15"],
    )
    start = time.monotonic()
    connect(config.address)
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
        "audio_s": round(progress.audio_s, 3),
        "conversations": progress.labeled + progress.failed,
        "utterances_per_s": round(progress.utterances / (done - start), 2),
        "steady_utterances_per_s": round(
            progress.utterances / max(job.timings.get("schedule_s", 0.0), 1e-6), 2
        ),
        "actors": args.actors,
        "cpus_per_actor": args.cpus_per_actor,
    }


def header(args: argparse.Namespace, corpus: str, local: dict) -> dict:
    return {
        "benchmark": "throughput",
        "corpus": corpus,
        "mode": args.mode,
        "model": args.random_model or args.model or "default",
        "device": local["device"],
        "dtype": local["dtype"],
        "cpus": os.cpu_count(),
    }


def run(args: argparse.Namespace) -> int:
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="dpm-bench-throughput-")
    if args.slots:  # the batched engine per K, in-process (pipelines.bench.slots)
        model_uri = args.model
        if args.random_model:
            model_uri = save_random_model(args.random_model, os.path.join(args.workdir, "model"))
        report = run_slots(args, model_uri)
        report["model"] = args.random_model or args.model or "default"
        print(json.dumps(report, indent=2))
        return 0
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
    model_uri = args.model
    if args.random_model:
        model_uri = save_random_model(args.random_model, os.path.join(args.workdir, "model"))
    if args.metrics_cost:  # the Ray side only, metrics on against off
        cost = run_metrics_cost(
            args.metrics_cost,
            args.workdir,
            lambda metrics, output: on_ray(corpus, model_uri, args.mode, args, metrics, output),
        )
        report = {
            "benchmark": "throughput --metrics-cost",
            "corpus": corpus,
            "mode": args.mode,
            "model": args.random_model or args.model or "default",
            "actors": args.actors,
            "cpus_per_actor": args.cpus_per_actor,
            "cpus": os.cpu_count(),
            "metrics_cost": cost,
        }
        print(json.dumps(report, indent=2))
        return 0
    threads = args.in_process_threads or max(1, int(args.cpus_per_actor))
    local = in_process(corpus, model_uri, args.mode, threads, args.device, args.dtype)
    if args.in_process_only:
        print(json.dumps({**header(args, corpus, local), "in_process": local}, indent=2))
        return 0
    ray_side = on_ray(corpus, model_uri, args.mode, args)
    report = {
        **header(args, corpus, local),
        "in_process": local,
        "ray": ray_side,
        "ratio_wall_ray_over_in_process": round(ray_side["wall_s"] / local["wall_s"], 3),
        "ratio_steady_ray_over_in_process_labeling": round(
            ray_side["schedule_s"] / max(local["read_tokenize_s"] + local["label_s"], 1e-6), 3
        ),
    }
    print(json.dumps(report, indent=2))
    return 0 if ray_side["exit_code"] == 0 else 1
