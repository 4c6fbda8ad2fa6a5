"""``dpm bench memory_headroom``: how much a memory of persisting moods could add to a model's
own reads, on a gold-labelled corpus in conversation order.

The model labels the corpus in ``utterance`` mode: each utterance's own read, as probabilities.
Two references then read those same probabilities through a causal memory of each speaker's
mood, with knowledge no labeler has:

- ``filter``: the exact forward filter of a Markov chain over each speaker's emotions (turn by
  turn, in order) that keeps the emotion with the corpus's own rate, counted from its gold
  labels, and otherwise moves to any other emotion alike. The reads enter as ``p ** tau``, with
  ``tau`` the best of a grid on this same corpus (the reads of a fused model are overconfident;
  the filter needs them softened).
- ``previous_gold``: the same chain, but its prior sits on the *gold* emotion of the speaker's
  previous turn: a memory that never errs about the past.

Both are oracles, so they bound from above what remembering the mood can add to these reads
(the memory could still learn the voice, which they do not model). A ``dpm`` mode far below
``filter`` leaves gain on the table; a gain target above ``previous_gold`` needs better reads,
not a better memory. The model's own modes (``--modes``, default ``dpm``) are scored beside
them on the same utterances, each with its difference from ``utterance`` (paired bootstrap over
conversations).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

import numpy as np

from dpm_worker.errors import BadInputError, ConfigError
from pipelines.bench.command import print_report
from pipelines.eval.config import add_labeling_arguments
from pipelines.eval.results import ModeResult, compare, score

TAUS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="gold-labelled manifest, in order")
    parser.add_argument("--model", default=None, help="model folder (default: packaged)")
    parser.add_argument(
        "--modes",
        default="dpm",
        help="the model's own modes scored beside the references, comma-separated, or 'none' "
        "(%(default)s)",
    )
    parser.add_argument("--slots", type=int, default=8, help="conversations at once")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    add_labeling_arguments(parser)


def speaker_turns(result: ModeResult) -> list[list[int]]:
    """Indices of ``result``, grouped by (conversation, speaker), each in utterance order."""
    turns: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(result.conversation_id, result.speaker, strict=True)):
        turns.setdefault(key, []).append(i)
    return [sorted(idx, key=lambda i: result.utterance_index[i]) for idx in turns.values()]


def stay_rate(gold: Sequence[str | None], turns: list[list[int]]) -> float:
    """The share of a speaker's consecutive gold-labelled turns that keep the emotion."""
    kept = moved = 0
    for idx in turns:
        labelled = [gold[i] for i in idx if gold[i] is not None]
        for before, after in zip(labelled, labelled[1:], strict=False):
            kept += before == after
            moved += before != after
    if kept + moved == 0:
        raise BadInputError("no speaker has two gold-labelled turns: no persistence to measure", "")
    return kept / (kept + moved)


def transition_prior(belief: np.ndarray, stay: float) -> np.ndarray:
    """The chain's prior for the next turn: keep the emotion with ``stay``, else any other."""
    k = belief.shape[0]
    return stay * belief + (1.0 - stay) / (k - 1) * (1.0 - belief)


def filter_reads(probs: np.ndarray, stay: float, tau: float) -> np.ndarray:
    """Forward filter over one speaker's turns (``[T, K]`` reads): ``[T]`` decisions."""
    k = probs.shape[1]
    belief = np.full(k, 1.0 / k)
    out = np.empty(len(probs), dtype=np.int64)
    for t, p in enumerate(probs):
        prior = belief if t == 0 else transition_prior(belief, stay)
        log_post = tau * np.log(np.clip(p, 1e-30, 1.0)) + np.log(prior)
        post = np.exp(log_post - log_post.max())
        belief = post / post.sum()
        out[t] = int(belief.argmax())
    return out


def previous_gold_reads(
    probs: np.ndarray, gold: Sequence[int | None], stay: float, tau: float
) -> np.ndarray:
    """Each turn read with the chain's prior on the previous turn's gold emotion (uniform at
    the first turn and after a turn without gold): ``[T]`` decisions."""
    k = probs.shape[1]
    out = np.empty(len(probs), dtype=np.int64)
    for t, p in enumerate(probs):
        prior = np.full(k, 1.0 / k)
        if t > 0 and gold[t - 1] is not None:
            prior = transition_prior(np.eye(k)[gold[t - 1]], stay)
        out[t] = int(np.argmax(tau * np.log(np.clip(p, 1e-30, 1.0)) + np.log(prior)))
    return out


def oracle_results(
    reads: ModeResult, labels: tuple[str, ...], stay: float
) -> dict[str, tuple[ModeResult, float]]:
    """``filter`` and ``previous_gold`` (module docstring) at their best ``tau`` on ``reads``:
    name -> (result, tau)."""
    from dpm_worker.metrics import summarize

    if len(reads.probs) != len(reads.pred):
        raise BadInputError("the model's reads carry no probabilities", "")
    probs = np.stack([np.asarray(p, dtype=np.float64) for p in reads.probs])
    gold_idx = [None if g is None else labels.index(g) for g in reads.gold]
    turns = speaker_turns(reads)
    scored = [i for i, g in enumerate(reads.gold) if g is not None]
    gold = [str(reads.gold[i]) for i in scored]

    def ua(pred: list[str]) -> float:
        return float(summarize(gold, [pred[i] for i in scored], labels)["ua"])

    def decide(tau: float, kind: str) -> list[str]:
        pred = list(reads.pred)
        for idx in turns:
            if kind == "filter":
                out = filter_reads(probs[idx], stay, tau)
            else:
                out = previous_gold_reads(probs[idx], [gold_idx[i] for i in idx], stay, tau)
            for i, o in zip(idx, out, strict=True):
                pred[i] = labels[o]
        return pred

    best: dict[str, tuple[ModeResult, float]] = {}
    for kind in ("filter", "previous_gold"):
        decided = {tau: decide(tau, kind) for tau in TAUS}
        tau = max(TAUS, key=lambda t: (ua(decided[t]), -t))  # ties: the smaller tau
        best[kind] = (dataclasses.replace(reads, pred=decided[tau]), tau)
    return best


def run(args: argparse.Namespace) -> int:
    import torch

    from dpm_worker.model import load_model
    from pipelines.eval.config import load_labeling_config
    from pipelines.eval.corpus import label_conversations, load_conversations
    from pipelines.eval.evaluate import parse_modes

    modes = [] if args.modes.strip() == "none" else parse_modes(args.modes)
    if args.slots < 1 or args.threads < 1 or args.bootstrap < 0:
        raise ConfigError("--slots and --threads must be >= 1, --bootstrap >= 0")
    labeling = load_labeling_config(args, {})
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    labels = model.vocab.labels
    conversations = load_conversations(args.corpus, model)
    print("memory_headroom: utterance reads", file=sys.stderr, flush=True)
    reads = label_conversations(
        model, conversations, dataclasses.replace(labeling, mode="utterance"), args.slots
    )
    stay = stay_rate(reads.gold, speaker_turns(reads))
    results: dict[str, ModeResult] = {"utterance": reads}
    taus: dict[str, float] = {}
    for name, (result, tau) in oracle_results(reads, labels, stay).items():
        results[name], taus[name] = result, tau
    for mode in modes:
        if mode == "utterance":
            continue
        print(f"memory_headroom: model mode {mode}", file=sys.stderr, flush=True)
        config = dataclasses.replace(labeling, mode=mode)
        results[mode] = label_conversations(model, conversations, config, args.slots)
    report = {
        "corpus": args.corpus,
        "model": model.model_id,
        "n_utterances": sum(g is not None for g in reads.gold),
        "gold_stay_rate": round(stay, 4),
        "tau": taus,
        "scores": {
            name: {k: v for k, v in score(r, labels, 10, args.bootstrap).items() if k in KEYS}
            for name, r in results.items()
        },
        "minus_utterance": {
            name: {
                k: v
                for k, v in compare(r, reads, labels, args.bootstrap).items()
                if k in ("ua_diff", "ua_diff_ci")
            }
            for name, r in results.items()
            if name != "utterance"
        },
    }
    print_report(report, args.json)
    return 0


KEYS = ("n", "ua", "ua_ci", "wa", "per_class")
