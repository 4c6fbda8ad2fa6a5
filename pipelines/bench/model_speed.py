"""``dpm bench model_speed``: end-to-end labeling speed of several models on the same corpus.

Each model labels the same manifest in this process on ``--threads`` torch threads (one core by
default), the whole way a worker does it: decode and resample the audio, cut the segments (VAD
where the manifest has no times), tokenize, and label in ``--mode``. The models take turns,
``--repeats`` times each, so machine load falls on all of them alike; each model's speed is its
median over its turns, in audio hours labeled per hour, with the ratio to the first model, and
the seconds of that median turn per stage (read, tokenize, label).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from dpm_worker.errors import ConfigError
from pipelines.bench.command import print_report
from pipelines.eval.config import add_labeling_arguments, load_labeling_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="manifest file or folder")
    parser.add_argument(
        "--models",
        required=True,
        help="comma-separated model folders; 'default' is the packaged model; the first is the "
        "reference of the ratios",
    )
    parser.add_argument("--mode", default="dpm", help="labeling mode (%(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="turns per model (%(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (%(default)s)")
    parser.add_argument("--limit-conversations", type=int, default=None, help="first K only")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    add_labeling_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from dpm_worker.model import load_model
    from pipelines.eval.corpus import label_conversations, load_conversations

    labeling = dataclasses.replace(load_labeling_config(args, {}), mode=args.mode)
    paths = [p.strip() for p in args.models.split(",") if p.strip()]
    if not paths or args.repeats < 1 or args.threads < 1:
        raise ConfigError("--models needs a model, --repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    models = {path: load_model(None if path == "default" else path) for path in paths}
    seconds: dict[str, list[float]] = {path: [] for path in paths}
    stages: dict[str, list[dict[str, float]]] = {path: [] for path in paths}
    audio_s = 0.0
    for _ in range(args.repeats):
        for path, model in models.items():
            start = time.perf_counter()
            timings: dict[str, float] = {}
            conversations = load_conversations(
                args.corpus, model, args.limit_conversations, timings=timings
            )
            labeled = time.perf_counter()
            label_conversations(model, conversations, labeling)
            timings["label"] = time.perf_counter() - labeled
            seconds[path].append(time.perf_counter() - start)
            stages[path].append(timings)
            audio_s = sum(
                len(u.audio_ids) / model.speech_tokenizer.rate_hz
                for c in conversations
                for u in c.utterances
                if u.audio_ids is not None
            )
    first = statistics.median(seconds[paths[0]])
    report = {
        "corpus": args.corpus,
        "mode": args.mode,
        "threads": args.threads,
        "audio_hours": audio_s / 3600.0,
        "models": {
            path: {
                "model_id": models[path].model_id,
                "seconds": seconds[path],
                "audio_hours_per_hour": audio_s / statistics.median(seconds[path]),
                "speed_ratio_to_first": first / statistics.median(seconds[path]),
                # the turn of median time: read (decode, resample, segment), tokenize (the
                # speech front end: features or encoder, codes, summaries), label (LLM, memory)
                "stage_seconds": _median_turn(seconds[path], stages[path]),
            }
            for path in paths
        },
    }
    print_report(report, args.json)
    return 0


def _median_turn(seconds: list[float], stages: list[dict[str, float]]) -> dict[str, float]:
    """The stage times of the turn whose total is the median."""
    order = sorted(range(len(seconds)), key=seconds.__getitem__)
    return {k: round(v, 3) for k, v in stages[order[len(order) // 2]].items()}
