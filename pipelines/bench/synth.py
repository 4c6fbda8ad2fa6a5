"""``dpm bench synth``: generation speed of the synthetic corpus, side by side for several
worker counts in one run (same config, so the outputs must also be byte-identical).

Prints JSON: per worker count the wall time, utterances per second, audio seconds per second
and CPU seconds (own threads + espeak-ng children); the headline ``utterances_per_second`` is the
fastest run's wall-clock rate. The machine may be shared, so the CPU-based rate is printed too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from dpm_worker.corpus import SynthConfig, generate_corpus
from dpm_worker.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--min-utterances", type=int, default=20)
    parser.add_argument("--max-utterances", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workers", default="1,2", help="comma-separated worker counts to compare (default 1,2)"
    )
    parser.add_argument(
        "--separability",
        type=int,
        default=0,
        metavar="N",
        help="also generate N conversations of 40-60 utterances and report how recognisable the "
        "emotions are from acoustics (single utterance vs speaker baseline known vs context; "
        "N >= 12 for stable numbers, classes need several speakers each)",
    )


def _digest(root: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            sha.update(str(path.relative_to(root)).encode())
            sha.update(path.read_bytes())
    return sha.hexdigest()


def _cpu_seconds() -> float:
    # this process's threads plus the espeak-ng subprocesses it waited for
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _separability(conversations: int, seed: int) -> dict:
    from pipelines.bench.separability import measure_separability

    config = SynthConfig(
        conversations=conversations, seed=seed + 1, min_utterances=40, max_utterances=60
    )
    with tempfile.TemporaryDirectory(prefix="dpm-bench-synth-sep-") as tmp:
        table = generate_corpus(tmp, config, workers=2)
        return {"config": json.loads(config.to_json()), **measure_separability(tmp, table)}


def run(args: argparse.Namespace) -> int:
    try:
        worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        raise ConfigError(
            f"--workers must be comma-separated integers, got {args.workers!r}"
        ) from None
    if not worker_counts or min(worker_counts) < 1:
        raise ConfigError(f"--workers must list counts >= 1, got {args.workers!r}")
    config = SynthConfig(
        conversations=args.conversations,
        seed=args.seed,
        min_utterances=args.min_utterances,
        max_utterances=args.max_utterances,
    )
    runs, digests = [], set()
    with tempfile.TemporaryDirectory(prefix="dpm-bench-synth-") as tmp:
        for workers in worker_counts:
            out = Path(tmp) / f"w{workers}"
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            table = generate_corpus(str(out), config, workers=workers)
            seconds = time.perf_counter() - start
            cpu = _cpu_seconds() - cpu_start
            starts, ends = table.column("start_s").to_pylist(), table.column("end_s").to_pylist()
            speech_s = sum(e - s for s, e in zip(starts, ends, strict=True))
            runs.append(
                {
                    "workers": workers,
                    "utterances": table.num_rows,
                    "seconds": round(seconds, 3),
                    "utterances_per_second": round(table.num_rows / seconds, 2),
                    "speech_seconds_per_second": round(speech_s / seconds, 2),
                    "cpu_seconds": round(cpu, 3),
                    "utterances_per_cpu_second": round(table.num_rows / cpu, 2),
                }
            )
            digests.add(_digest(out))
    best = max(runs, key=lambda r: r["utterances_per_second"])
    report = {
        "benchmark": "synth",
        "config": json.loads(config.to_json()),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "runs": runs,
        "utterances_per_second": best["utterances_per_second"],
        # what the cores could do if nobody else were using them (the machine is shared)
        "utterances_per_second_if_idle": round(
            min(len(os.sched_getaffinity(0)), best["workers"]) * best["utterances_per_cpu_second"],
            2,
        ),
        "best_workers": best["workers"],
        "speedup_vs_first": round(
            best["utterances_per_second"] / runs[0]["utterances_per_second"], 2
        ),
        "identical_bytes_across_runs": len(digests) == 1,
    }
    if args.separability:
        report["separability"] = _separability(args.separability, args.seed)
    print(json.dumps(report, indent=2))
    return 0
