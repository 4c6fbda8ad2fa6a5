"""``dpm bench memory``: per-utterance time and process memory at the start and the end of one
long conversation, for each labeling mode, measured side by side in one run.

DPM's promise is constant cost per utterance: the history in context is capped at n_r tokens and
the memory is a fixed-size adapter, so utterance 190 costs what utterance 10 costs. ``full`` mode
is the counter-example: its context grows with the conversation (up to the model's context).

The conversation comes from the synthetic generator (``--tokens synth``, real speech tokens of
espeak-ng speech, about half a minute to render 200 utterances) or, with ``--tokens random``,
uniformly random speech codes of the same lengths (fine for timing: cost depends on token counts
only, not on their values).

Output JSON: ``{"modes": {MODE: {"ms_first20", "ms_last20", "rss_mb_first20", "rss_mb_last20",
"wall_ms_first20", "wall_ms_last20", "ms_ratio", "rss_growth_mb", "context_first20",
"context_last20"}}, ...}``. ``ms_*`` is the labeling thread's CPU time per utterance (median over
the 20 utterances; with one torch thread this is the work done, and it does not count other
processes' load on a shared machine); ``wall_ms_*`` is wall time; RSS is the mean.
``full`` runs with ``--full-context`` tokens (default 2048) so that its growth shows past the
default model's short trained context.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import numpy as np

from dpm_worker.errors import ConfigError
from dpm_worker.memory import MODES, LabelingConfig, SlotLabeler
from dpm_worker.utterance import Utterance
from pipelines.eval import add_labeling_arguments, load_labeling_config

EDGE = 20  # utterances at each end of the conversation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--utterances", type=int, default=200, help="conversation length")
    parser.add_argument("--model", default=None, help="model folder (default: packaged)")
    parser.add_argument(
        "--modes", default="utterance,window,full,dpm", help="comma-separated modes (%(default)s)"
    )
    parser.add_argument("--window-tokens", type=int, help="n_r (default: labeling.window_tokens)")
    parser.add_argument("--tokens", choices=("synth", "random"), default="synth")
    parser.add_argument("--seed", type=int, default=2024, help="conversation seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (%(default)s)")
    parser.add_argument(
        "--full-context",
        type=int,
        default=2048,
        help="context of full mode in tokens (%(default)s); the default model is trained on "
        "384, which 5 utterances fill; cost, not accuracy, is measured here",
    )
    add_labeling_arguments(parser)


def synthetic_conversation(model, n: int, seed: int, kind: str) -> list[Utterance]:
    """One long dyadic conversation, tokenized with the model's speech tokenizer."""
    if kind == "random":
        rng = np.random.default_rng(seed)
        # A model with an acoustic head reads a summary beside the codes: random standardised
        # ones (the head's cost is one matrix-vector product whatever the values).
        head_dim = model.acoustic_head.dim if model.acoustic_head is not None else 0
        # 1.5-5 s at 25 Hz, as the synthetic corpus
        return [
            Utterance(
                conversation_id="bench",
                utterance_index=i,
                speaker="ab"[i % 2],
                audio_ids=rng.integers(0, model.vocab.n_audio, size=int(rng.integers(38, 125))),
                acoustic=rng.standard_normal(head_dim) if head_dim else None,
            )
            for i in range(n)
        ]
    from dpm_worker.audio import conversation_segments
    from dpm_worker.corpus import SynthConfig, generate_corpus, read_manifest, to_rows
    from dpm_worker.speech import tokenize_utterances

    with tempfile.TemporaryDirectory(prefix="dpm_bench_") as folder:
        config = SynthConfig(conversations=1, seed=seed, min_utterances=n, max_utterances=n)
        generate_corpus(folder, config)
        rows = to_rows(read_manifest(folder))
        segments = conversation_segments(rows)
    # No fit check: full mode runs past the trained context on purpose (--full-context).
    return list(tokenize_utterances(segments, model.speech_tokenizer))


def measure(model, conversation: list[Utterance], config: LabelingConfig) -> dict:
    """Label the conversation once; time and RSS are sampled as each utterance finishes."""
    import psutil

    process = psutil.Process()
    labeler = SlotLabeler(model, config, 1)
    rss: list[float] = []
    cpu: list[float] = []

    def run(key: str, utterances: list[Utterance], sample: bool) -> list:
        # One conversation, one step at a time: the samples taken when a step completes an
        # utterance bracket that utterance exactly (its chunks included).
        labeler.admit(key, utterances)
        start = time.thread_time()
        while not labeler.finished(key):
            done, failed = labeler.advance()
            if failed:
                raise failed[key]
            if done and sample:
                cpu.append((time.thread_time() - start) * 1000.0)
                rss.append(process.memory_info().rss / 2**20)
                start = time.thread_time()
        return labeler.release(key)

    try:
        run("warm-up", conversation[:4], False)  # allocator, first adapter writes
        preds = run("measured", conversation, True)
    finally:
        labeler.close()
    wall = np.array([p.ms for p in preds])
    context = np.array([p.context_tokens for p in preds])
    first, last = slice(0, EDGE), slice(len(preds) - EDGE, len(preds))
    cpu_a = np.array(cpu)
    out = {
        # CPU time of the labeling thread: on a shared machine, wall time measures the
        # neighbours as much as the code (torch runs on this thread with --threads 1).
        "ms_first20": float(np.median(cpu_a[first])),
        "ms_last20": float(np.median(cpu_a[last])),
        "rss_mb_first20": float(np.mean(rss[first])),
        "rss_mb_last20": float(np.mean(rss[last])),
        "wall_ms_first20": float(np.median(wall[first])),
        "wall_ms_last20": float(np.median(wall[last])),
        "context_first20": float(context[first].mean()),
        "context_last20": float(context[last].mean()),
        "total_s": float(wall.sum() / 1000),
    }
    out["ms_ratio"] = out["ms_last20"] / out["ms_first20"]
    out["rss_growth_mb"] = out["rss_mb_last20"] - out["rss_mb_first20"]
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from dpm_worker.model import load_model

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise ConfigError(f"--modes must list modes from {MODES}, got {args.modes!r}")
    if args.utterances < 2 * EDGE:
        raise ConfigError(f"--utterances must be >= {2 * EDGE}, got {args.utterances}")
    torch.set_num_threads(args.threads)
    labeling = load_labeling_config(args, {"labeling.window_tokens": args.window_tokens})
    model = load_model(args.model)
    trained_context = int(model.max_context)
    start = time.perf_counter()
    conversation = synthetic_conversation(model, args.utterances, args.seed, args.tokens)
    prepare_s = time.perf_counter() - start
    results = {}
    for mode in modes:
        config = dataclasses.replace(labeling, mode=mode)
        # Only full mode reads max_context beyond the window; RoPE runs past the trained length.
        model.max_context = args.full_context if mode == "full" else trained_context
        results[mode] = measure(model, conversation, config)
    model.max_context = trained_context
    report = {
        "modes": results,
        "utterances": len(conversation),
        "tokens": args.tokens,
        "audio_tokens": int(sum(len(u.codes()) for u in conversation)),
        "window_tokens": labeling.window_tokens,
        "max_context": trained_context,
        "full_context": args.full_context,
        "threads": args.threads,
        "model": model.model_id,
        "prepare_s": prepare_s,
    }
    if "dpm" in results and "window" in results:
        report["dpm_over_window_ms"] = results["dpm"]["ms_last20"] / results["window"]["ms_last20"]
    print(json.dumps(report, indent=2))
    return 0
