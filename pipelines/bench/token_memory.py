"""``dpm bench token_memory``: the training token cache's peak memory against the corpus size.

Each manifest (e.g. the same corpus cut to 10, 40 and 160 conversations) is tokenized into a
fresh token cache (``dpm_worker.training.tokenize_corpus``, the model's speech tokenizer on
CPU, one torch thread) in its own process, so every peak is that build's alone. Printed JSON,
one entry per manifest::

    {"builds": [{"manifest": M, "utterances": N, "audio_hours": H, "rss_before_mb": R0,
                 "peak_rss_mb": P, "max_rss_by_quarter_mb": [q1, q2, q3, q4],
                 "seconds": S}, ...], "peak_ratio_largest_over_smallest": X}

``max_rss_by_quarter_mb`` is the largest RSS sampled (every 0.2 s) up to each quarter of the
build's wall time: a streaming build levels off, a build that holds the corpus keeps climbing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

from dpm_worker.errors import DpmError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifests", nargs="+", help="manifests (files or folders), smallest first")
    parser.add_argument(
        "--model", help="model folder whose speech tokenizer is used (default: packaged)"
    )
    parser.add_argument("--workdir", help="where the caches go (default: a temp dir, removed)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child build


def build_one(manifest: str, model_uri: str | None, cache: str) -> dict:
    """Tokenize ``manifest`` into a new cache under ``cache``; its memory and time."""
    import psutil
    import pyarrow.compute as pc
    import torch

    from dpm_worker.corpus import read_manifest
    from dpm_worker.model import load_model
    from dpm_worker.training import tokenize_corpus

    torch.set_num_threads(1)
    read_manifest(manifest)  # a bad manifest fails here, before the model loads
    tokenizer = load_model(model_uri).speech_tokenizer
    proc = psutil.Process()
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), proc.memory_info().rss / 2**20))
            done.wait(0.2)

    before = proc.memory_info().rss / 2**20
    start = time.perf_counter()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    # a fingerprint of its own: never a cache hit from an earlier run
    dataset = tokenize_corpus(manifest, tokenizer, f"bench-{time.time_ns()}", cache_root=cache,
                              progress=False)  # fmt: skip
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    # The audio tokenized, from the codes: whole-file rows (RAVDESS, EMOVO) have no times in
    # the manifest, and VAD keeps only the speech of a recording.
    tokens = pc.sum(pc.list_value_length(dataset.data.column("codes"))).as_py() or 0
    hours = tokens / tokenizer.rate_hz / 3600

    def upto(fraction: float) -> float:
        seen = [rss for t, rss in samples if t - start <= wall * fraction] or [before]
        return round(max(seen), 1)

    return {
        "manifest": manifest,
        "utterances": len(dataset),
        "audio_hours": round(hours, 6),
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "max_rss_by_quarter_mb": [upto(q) for q in (0.25, 0.5, 0.75, 1.0)],
        "seconds": round(wall, 1),
    }


def run(args: argparse.Namespace) -> int:
    if args.one:
        print(json.dumps(build_one(args.manifests[0], args.model, args.workdir)))
        return 0
    with tempfile.TemporaryDirectory(prefix="dpm-bench-tokens-") as tmp:
        builds = []
        for n, manifest in enumerate(args.manifests):
            cache = os.path.join(args.workdir or tmp, f"cache{n}")
            cmd = [sys.executable, "-m", "pipelines.cli", "bench", "token_memory", manifest,
                   "--one", "--workdir", cache, *(["--model", args.model] if args.model else [])]  # fmt: skip
            # the child's log and errors go to this process's stderr
            done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            if done.returncode != 0:
                raise DpmError(
                    f"token_memory: the build of {manifest} exited with {done.returncode} "
                    "(its error is above)"
                )
            out = done.stdout
            builds.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(builds[-1]), file=sys.stderr)  # progress
    peaks = [b["peak_rss_mb"] for b in builds]
    report = {
        "benchmark": "token_memory",
        "builds": builds,
        "peak_ratio_largest_over_smallest": round(peaks[-1] / peaks[0], 3),
    }
    print(json.dumps(report, indent=2))
    return 0
