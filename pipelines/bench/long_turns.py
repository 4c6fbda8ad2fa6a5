"""``dpm bench long-turns``: how utterances longer than the model's context are labeled.

On a gold-labelled corpus with long turns (``dpm synth --long-turn-prob P``), every mode labels
the same tokens once per rule for over-long utterances (``LabelingConfig.long_utterances``:
``chunks`` or ``truncate``). Printed JSON, per rule and mode: UA on the long utterances, on the
rest, and on the rest that follow a long turn within ``--after`` utterances (whether the history
and memory stay sound after one), with 95% bootstrap intervals over conversations, and the
paired difference chunks - truncate on the long utterances.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

from dpm_worker.errors import ConfigError
from dpm_worker.memory import LONG_UTTERANCES, MODES, LabelingConfig
from dpm_worker.metrics import bootstrap_interval, group_confusions
from pipelines.eval.corpus import label_conversations, load_conversations
from pipelines.eval.results import ModeResult

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="gold-labelled manifest or folder")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--mode", default=",".join(MODES), help="modes (%(default)s)")
    parser.add_argument("--window-tokens", type=int, default=256, help="n_r (%(default)s)")
    parser.add_argument("--after", type=int, default=3, help="turns after a long one (3)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (%(default)s)")
    parser.add_argument("--json", default=None, help="also write the JSON here")


def _subsets(result: ModeResult, long: list[bool], after: int) -> dict[str, np.ndarray]:
    """Indices of scored utterances: long, the rest, and the rest soon after a long one."""
    since: list[int | None] = []
    last: dict[str, int] = {}
    for i, conv in enumerate(result.conversation_id):
        pos = result.position[i]
        since.append(pos - last[conv] if conv in last else None)
        if long[i]:
            last[conv] = pos
    scored = [i for i, g in enumerate(result.gold) if g is not None]
    return {
        "long": np.asarray([i for i in scored if long[i]], dtype=np.int64),
        "rest": np.asarray([i for i in scored if not long[i]], dtype=np.int64),
        "after_long": np.asarray(
            [i for i in scored if not long[i] and (since[i] or after + 1) <= after],
            dtype=np.int64,
        ),
    }


def _confusions(result: ModeResult, idx: np.ndarray, labels: tuple[str, ...]) -> np.ndarray:
    pick = [int(i) for i in idx]
    return group_confusions(
        [result.conversation_id[i] for i in pick],
        [str(result.gold[i]) for i in pick],
        [result.pred[i] for i in pick],
        labels,
    )[1]


def run(args: argparse.Namespace) -> int:
    import torch

    from dpm_worker.model import load_model

    modes = [m for m in args.mode.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        raise ConfigError(f"--mode must list modes from {MODES}, got {args.mode!r}")
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    conversations = load_conversations(args.corpus, model)
    # Long: the utterance's tokens (+ <spk> and <audio_end>) exceed the model's context.
    long = [len(u.codes()) + 2 > model.max_context for c in conversations for u in c.utterances]
    labels = model.vocab.labels
    report: dict = {
        "corpus": args.corpus,
        "model": model.model_id,
        "max_context": model.max_context,
        "utterances": len(long),
        "long_utterances": int(sum(long)),
        "rules": {},
    }
    results: dict[tuple[str, str], ModeResult] = {}
    for rule in LONG_UTTERANCES:
        for mode in modes:
            config = LabelingConfig(
                mode=mode, window_tokens=args.window_tokens, long_utterances=rule
            )
            start = time.perf_counter()
            result = label_conversations(model, conversations, config)
            results[rule, mode] = result
            block: dict[str, object] = {"seconds": round(time.perf_counter() - start, 1)}
            for name, idx in _subsets(result, long, args.after).items():
                if not len(idx):  # e.g. a corpus without long turns: null, not NaN (not JSON)
                    block[name] = {"n": 0, "ua": None, "ci": None}
                    continue
                ci = bootstrap_interval(_confusions(result, idx, labels), n_boot=args.bootstrap)
                block[name] = {"n": len(idx), "ua": ci["value"], "ci": [ci["lo"], ci["hi"]]}
            report["rules"].setdefault(rule, {})[mode] = block
            log.info("long-turns: %s %s %s", rule, mode, block)
    report["chunks_minus_truncate"] = {}
    for mode in modes:
        a, b = results["chunks", mode], results["truncate", mode]
        idx = _subsets(a, long, args.after)["long"]
        if not len(idx):
            report["chunks_minus_truncate"][mode] = {"ua_diff": None, "ci": None}
            continue
        d = bootstrap_interval(
            _confusions(a, idx, labels), _confusions(b, idx, labels), n_boot=args.bootstrap
        )
        report["chunks_minus_truncate"][mode] = {"ua_diff": d["value"], "ci": [d["lo"], d["hi"]]}
    text = json.dumps(report, indent=2, allow_nan=False)
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(text + "\n")
    return 0
