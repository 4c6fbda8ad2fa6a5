"""``dpm bench NAME``: benchmarks that print JSON, comparing configurations side by side in one
run (ratios, not absolute times). Each benchmark lives in ``pipelines/bench/<name>.py`` and
exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

BENCHMARKS: dict[str, str] = {
    "synth": "generation speed of the synthetic corpus (utterances per second)",
    "memory": "per-utterance time and RSS at the start and end of a long conversation, per mode",
    "throughput": "the Ray job against the in-process loop on the same corpus",
    "e2e": "models in turns through the real Ray job per slots setting: audio-h/h, ratios, stage profile",
    "scale": "driver memory while scheduling a manifest of many short conversations",
    "separability": "how far prosody alone separates a corpus's emotions (cross-validated on it)",
    "model_speed": "end-to-end labeling speed (decode, segment, tokenize, label) of models side by side",
    "real_baseline": "eGeMAPS functionals or the encoder's pooled states + logistic regression (raw, speaker-z) beside the model",
    "cross_corpus": "models and linear references on corpora they never heard (leave-one-corpus-out), with CIs and calibration",
    "memory_headroom": "what an oracle memory of persisting moods adds to a model's own reads",
    "prosody_baseline": "five-statistic logistic regression: train on one corpus, test on another",
    "long_turns": "UA on utterances longer than the context vs the rest, per rule and mode",
    "faults": "a labeling job with K actor kills and a driver restart against a clean run",
    "memory_loop_cost": "order-2 memory loop: ms per training step and peak RSS per (M, k)",
    "token_memory": "peak RSS of token-cache builds of growing corpora (one process each)",
    "startup": "a model start with the stored-hash check against a full hash (1 GB folder)",
    "encoder_batch": "the speech encoder one wave at a time against length-bucketed batches: speed, state and label deltas",
    "diarization": "DER of the mono diarizer (built actor pairs, AMI, synthetic mixes), speed, UA",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        choices=sorted(BENCHMARKS),
        help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()),
    )
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options")


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"pipelines.bench.{args.name}")
    parser = argparse.ArgumentParser(
        prog=f"dpm bench {args.name}", description=BENCHMARKS[args.name]
    )
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(args.rest)))


def print_report(report: dict[str, Any], json_path: str | None) -> None:
    """Print a benchmark's JSON report, and write it to ``json_path`` too when given."""
    text = json.dumps(report, indent=2)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text + "\n")
    print(text)
