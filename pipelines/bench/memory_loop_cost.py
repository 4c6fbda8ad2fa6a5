"""``dpm bench memory_loop_cost``: what the order-2 memory loop costs per training step.

For each write target and each (M = ``truncate_writes``, k = ``steps_per_utterance``) the
memory-loop trainer (``dpm_worker/training/memory_loop.py``, ``order: 2``) trains the default
model (or ``--model``) on a token conversation of random speech codes (two speakers,
``--utterance-tokens`` codes per utterance, n_r 256; the cost depends on token counts only),
one backbone update per utterance, no plain batches. Beside them, ``order: 1`` with the same
k, in the same run. Each configuration runs in its own process (spawned), so its peak RSS is
its own. Printed JSON, per target::

    {"prior": {"order1_k2": {"ms_per_step": T, "peak_rss_mb": R},
               "M2_k2": {"ms_per_step": T, "peak_rss_mb": R, "time_vs_order1": x,
                         "extra_rss_mb_vs_order1": d}, ...}, ...}

``ms_per_step`` is the steady-state CPU time of one utterance (write(s), read, backward,
optimizer step): the process's CPU time (``time.process_time``, so other load on the machine
does not count) of a 2n-utterance conversation minus that of an n-utterance one, over n, so the
first turns of a speaker (fewer than M writes to replay) do not count. ``peak_rss_mb`` is
the process's peak resident memory after that work (``ru_maxrss``), the model and torch
included; the order-1 row is the reference for both ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import resource
import time
from dataclasses import replace

from dpm_worker.errors import ConfigError, DpmError
from dpm_worker.memory import WRITE_TARGETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder (default: the packaged model)")
    parser.add_argument("--writes", default="1,2,4", help="M values (%(default)s)")
    parser.add_argument("--steps", default="1,2", help="k values (%(default)s)")
    parser.add_argument("--targets", default="prior,audio", help="write targets (%(default)s)")
    parser.add_argument("--utterances", type=int, default=12, help="n (%(default)s)")
    parser.add_argument("--utterance-tokens", type=int, default=75, help="codes each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (%(default)s)")


def _counts(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} must list integers, got {text!r}") from None
    if min(values) < 1:
        raise ConfigError(f"{flag} must list integers >= 1, got {text!r}")
    return values


def _conversation(n: int, tokens: int, n_audio: int, seed: int):  # noqa: ANN202
    import numpy as np

    from dpm_worker.training import TrainingConversation
    from dpm_worker.utterance import Utterance

    rng = np.random.default_rng(seed)
    utts = [
        Utterance(f"c{seed}", i, "ab"[i % 2], audio_ids=rng.integers(0, n_audio, size=tokens))
        for i in range(n)
    ]
    return TrainingConversation(f"c{seed}", utts, [int(x) for x in rng.integers(0, 4, size=n)])


def _measure(spec: dict, out: mp.Queue) -> None:
    """One configuration in a fresh process: steady-state ms per step and peak RSS."""
    import torch

    from dpm_worker.memory import MemoryConfig
    from dpm_worker.model import default_model_path, load_model
    from dpm_worker.training import MemoryLoopConfig, MemoryLoopTrainer

    torch.set_num_threads(spec["threads"])
    model = load_model(spec["model"] or str(default_model_path()))
    memory = MemoryConfig(write_target=spec["target"], steps_per_utterance=spec["k"])
    if spec["target"] != "prior":
        memory = replace(memory, lr=1e-3)  # an audio write's scale; the cost does not care
    loop = MemoryLoopConfig(epochs=1, lr=1e-6, warmup_steps=0, utterances_per_step=1,
                            plain_every=0, window_tokens=256, order=spec["order"],
                            truncate_writes=spec["m"])  # fmt: skip
    trainer = MemoryLoopTrainer(model, memory, loop)
    n, tokens, n_audio = spec["n"], spec["tokens"], model.vocab.n_audio
    trainer.train([_conversation(4, tokens, n_audio, 0)], progress=False)  # warm-up
    timings = []
    for length, seed in ((n, 1), (2 * n, 2)):
        start = time.process_time()
        trainer.train([_conversation(length, tokens, n_audio, seed)], progress=False)
        timings.append(time.process_time() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out.put({"ms_per_step": round(1000 * (timings[1] - timings[0]) / n, 1),
             "peak_rss_mb": round(peak, 1)})  # fmt: skip


def _result(proc: mp.process.BaseProcess, out: mp.Queue, name: str) -> dict:
    """What the configuration's process put on the queue; a DpmError when it died first
    (a bare ``get`` waited forever for a process that had failed or been killed)."""
    while True:
        try:
            return out.get(timeout=1.0)
        except queue.Empty:
            if not proc.is_alive():
                try:  # it may have put its result just before it ended
                    return out.get(timeout=1.0)
                except queue.Empty:
                    raise DpmError(
                        f"memory_loop_cost: the process of {name} exited with {proc.exitcode} "
                        "before reporting (its error is above)"
                    ) from None


def run(args: argparse.Namespace) -> int:
    ctx = mp.get_context("spawn")
    writes, steps = _counts(args.writes, "--writes"), _counts(args.steps, "--steps")
    targets = [t for t in args.targets.split(",") if t]
    if not targets or any(t not in WRITE_TARGETS for t in targets):
        raise ConfigError(f"--targets must list targets from {WRITE_TARGETS}, got {args.targets!r}")
    if args.utterances < 1 or args.utterance_tokens < 1:
        raise ConfigError("--utterances and --utterance-tokens must be >= 1, got "
                          f"{args.utterances} and {args.utterance_tokens}")  # fmt: skip
    base = {"model": args.model, "n": args.utterances, "tokens": args.utterance_tokens,
            "threads": args.threads}  # fmt: skip
    report: dict[str, dict] = {}
    for target in targets:
        rows: dict[str, dict] = {}
        configs = [(f"order1_k{k}", 1, 1, k) for k in steps]
        configs += [(f"M{m}_k{k}", 2, m, k) for m in writes for k in steps]
        for name, order, m, k in configs:
            results: mp.Queue = ctx.Queue()
            spec = dict(base, target=target, order=order, m=m, k=k)
            proc = ctx.Process(target=_measure, args=(spec, results))
            proc.start()
            rows[name] = _result(proc, results, f"{target} {name}")
            proc.join()
            ref = rows.get(f"order1_k{k}")
            if order == 2 and ref:
                ms, ref_ms = rows[name]["ms_per_step"], ref["ms_per_step"]
                # null when the reference's steady-state time rounds to 0 (tiny sizes)
                rows[name]["time_vs_order1"] = round(ms / ref_ms, 2) if ref_ms > 0 else None
                rows[name]["extra_rss_mb_vs_order1"] = round(rows[name]["peak_rss_mb"] - ref["peak_rss_mb"], 1)  # fmt: skip
        report[target] = rows
    print(json.dumps(report, indent=2))
    return 0
