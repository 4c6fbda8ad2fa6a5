"""``dpm bench throughput --slots 1,8``: utterances per second of the labeling engine per K.

In-process, on a fixed synthetic token corpus (random speech codes, ``--conversations`` x
``--utterances`` utterances of ``--utterance-tokens`` codes, seed 0: the labeling cost depends
only on the token counts, so no audio is synthesized), with the default model and settings
unless told otherwise. Printed JSON::

    {"matmul_gflops": F, "baseline": {"utterances_per_second": U0, ...},
     "slots": {"1": {"utterances_per_second": U, "ms_per_step": M, "gflops": G,
                     "fraction_of_peak": R}, ...}, "speedup_vs_baseline": {...}}

``baseline`` is one conversation at a time with the history recomputed (the engine with one
slot and ``recompute``: what batching and the history cache are measured against). ``gflops`` counts the matmul FLOPs of
the forward and backward passes (``torch.utils.flop_counter`` over the ops' shapes, in a
second, untimed run of the same work) per second of the timed run; ``matmul_gflops`` is this
machine's float32 matmul rate measured in the same process with the same threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import numpy as np
import torch

from dpm_worker.errors import ConfigError
from dpm_worker.memory import HISTORY_CACHES, LabelingConfig


def add_slot_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("batched engine (--slots)")
    group.add_argument("--slots", help="comma-separated K values, e.g. 1,8 (in-process only)")
    group.add_argument("--utterances", type=int, default=8, help="utterances per conversation")
    group.add_argument("--utterance-tokens", type=int, default=75, help="speech codes each")
    group.add_argument("--threads", type=int, default=2, help="torch threads (%(default)s)")
    group.add_argument(
        "--rounds", type=int, default=1, help="interleaved timing rounds (%(default)s)"
    )
    group.add_argument(
        "--profile", action="store_true", help="also report where the time goes (one more run)"
    )
    group.add_argument("--window-tokens", type=int, default=256, help="n_r (%(default)s)")
    group.add_argument(
        "--history-cache",
        choices=HISTORY_CACHES,
        default=LabelingConfig().history_cache,
        help="slots' setting (%(default)s, exact; reuse: -0.5 UA points on held-out data, "
        "95%% interval [-1.1, +0.1], dpm_worker/memory/cache.py)",
    )


def matmul_gflops(seconds: float = 1.0, n: int = 512) -> float:
    """This machine's float32 matmul rate (GFLOP/s) with the current torch threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2.0 * n**3 * count / (time.perf_counter() - start) / 1e9


def token_corpus(
    conversations: int, utterances: int, tokens: int, n_audio: int, acoustic_dim: int = 0
) -> list:
    """Random speech codes (and, for a model with an acoustic head, random standardised
    acoustic summaries of ``acoustic_dim`` values: the head's cost is one matrix-vector
    product per utterance whatever the values)."""
    from dpm_worker.utterance import Utterance

    rng = np.random.default_rng(0)
    return [
        [
            Utterance(
                f"c{c}",
                i,
                "ab"[i % 2],
                audio_ids=rng.integers(0, n_audio, size=tokens),
                acoustic=rng.standard_normal(acoustic_dim) if acoustic_dim else None,
            )  # fmt: skip
            for i in range(utterances)
        ]
        for c in range(conversations)
    ]


def _flops(work: Callable[[], int]) -> float:
    """GFLOP of one run of ``work``, counted from the ops' shapes (an untimed run)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops() / 1e9


# aten ops by where their time goes (self CPU time; the rest of the wall time is Python)
SPLIT = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention": ("scaled_dot_product", "flash_attention"),
    "optimizer": ("aten::index_add_", "aten::index_copy_", "aten::_foreach", "aten::lerp"),
}


def time_split(work: Callable[[], int]) -> dict:
    """Where one run of ``work`` spends its wall time: self CPU time of the matmuls, the
    attention kernels, the optimizer's updates, all other tensor ops, and the remainder
    (Python: the model's module code, the engine, building inputs; tokenization is not in it,
    the corpus is speech codes already)."""
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        work()
    wall = time.perf_counter() - start
    seconds = dict.fromkeys([*SPLIT, "other_ops"], 0.0)
    for event in prof.key_averages():
        name = event.key
        self_s = event.self_cpu_time_total / 1e6
        if not name.startswith("aten::") and "attention" not in name:
            continue
        part = next((k for k, keys in SPLIT.items() if any(n in name for n in keys)), None)
        seconds[part or "other_ops"] += self_s
    seconds["python_and_rest"] = max(0.0, wall - sum(seconds.values()))
    return {k: round(v / wall, 3) for k, v in seconds.items()}


def run_slots(args: argparse.Namespace, model_uri: str | None = None) -> dict:
    """Every variant timed in interleaved rounds (the machine's load hits all alike), on the
    model folder ``model_uri`` (default: the packaged model) with ``args.device`` and
    ``args.dtype``."""
    from dpm_worker.memory import label_batched
    from dpm_worker.model import load_model

    try:
        ks = [int(k) for k in args.slots.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--slots must list integers, got {args.slots!r}") from None
    if not ks or min(ks) < 1:
        raise ConfigError(f"--slots must list integers >= 1, got {args.slots!r}")
    torch.set_num_threads(args.threads)
    config = LabelingConfig(mode=args.mode, window_tokens=args.window_tokens)
    n_conv = max(args.conversations, max(ks))
    device, dtype = getattr(args, "device", None), getattr(args, "dtype", None)
    model = load_model(model_uri, device=device, dtype=dtype)
    head = model.acoustic_head
    corpus = token_corpus(
        n_conv, args.utterances, args.utterance_tokens, model.vocab.n_audio,
        head.dim if head is not None else 0,
    )  # fmt: skip
    n_utt = n_conv * args.utterances

    def batched(k: int, cache: str) -> Callable[[], int]:
        setting = dataclasses.replace(config, history_cache=cache)

        def work() -> int:
            label_batched(model, setting, corpus, k)
            # batched steps: every conversation has the same utterances (none in chunks), so
            # each group of K starts and ends together
            return -(-n_conv // k) * args.utterances

        return work

    # beside the default: batching alone (K max, recompute) and reuse alone (K 1, reuse)
    variants: dict[str, Callable[[], int]] = {"baseline": batched(1, "recompute")}
    variants.update({str(k): batched(k, args.history_cache) for k in ks})
    variants["batching_alone"] = batched(max(ks), "recompute")
    variants["reuse_alone"] = batched(1, "reuse")
    # the untimed first run of each variant counts its FLOPs and warms it up
    gflops = {name: _flops(work) for name, work in variants.items()}
    peak = matmul_gflops()
    times: dict[str, list[float]] = {name: [] for name in variants}
    steps: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, work in variants.items():
            start = time.perf_counter()
            steps[name] = work()
            times[name].append(time.perf_counter() - start)
    peak = max(peak, matmul_gflops())  # before and after: the less loaded of the two

    def block(name: str) -> dict:
        seconds = float(np.median(times[name]))
        gflop = gflops[name]
        return {
            "utterances_per_second": round(n_utt / seconds, 2),
            "ms_per_step": round(1000 * seconds / steps[name], 2),
            "gflops": round(gflop / seconds, 3),
            "fraction_of_peak": round(gflop / seconds / peak, 4),
            "seconds_per_round": [round(t, 2) for t in times[name]],
        }

    report: dict = {
        "benchmark": "throughput-slots",
        "mode": args.mode,
        "history_cache": args.history_cache,
        "device": str(model.device),
        "dtype": str(next(model.model.parameters()).dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "conversations": n_conv,
        "utterances": n_utt,
        "rounds": args.rounds,
        "matmul_gflops": round(peak, 2),
        "baseline": block("baseline"),
        "slots": {str(k): block(str(k)) for k in ks},
        "batching_alone": block("batching_alone"),
        "reuse_alone": block("reuse_alone"),
    }
    base = report["baseline"]["utterances_per_second"]
    compared = {**report["slots"], **{n: report[n] for n in ("batching_alone", "reuse_alone")}}
    report["speedup_vs_baseline"] = {
        k: round(v["utterances_per_second"] / base, 2) for k, v in compared.items()
    }
    if args.profile:
        report["time_split"] = {
            "baseline": time_split(variants["baseline"]),
            str(max(ks)): time_split(variants[str(max(ks))]),
        }
    report["note"] = (
        "baseline: one conversation at a time, history recomputed; slots: K conversations "
        "at once, history_cache "
        + args.history_cache
        + "; each variant timed in every round, interleaved, median round reported; "
        "gflops: forward+backward matmul FLOPs (shapes) per second; time_split: shares of the "
        "wall time by self CPU time of ops (python_and_rest: the model's module code, the "
        "engine, input building; no tokenization, the corpus is speech codes)"
    )
    return report
