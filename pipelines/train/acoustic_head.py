"""``dpm head``: fit a model's acoustic head and write the model with it as a new folder.

The head (``dpm_worker/model/acoustic_head.py``) is a class-balanced logistic regression on
each utterance's acoustic summary, read beside the speech-LLM and fused into its distribution
(``p ∝ p_llm × p_head ** weight``). Recipe:

1. The manifest's conversations are split as ``dpm train`` splits them (``--val-fraction``,
   ``--seed``, ``--val-group``: pass the backbone's own values and the head's validation
   speakers are ones the backbone never trained on).
2. ``--conversations`` (a regular expression over conversation ids) picks the ones the head
   reads, on both sides of the split (e.g. only the real speech of a mixed corpus).
3. The head is fitted on the training side's summaries (the model's tokenizer, so its speaker
   references), each class weighing the same. ``--share REGEX=F`` gives the training
   conversations REGEX finds the share F of that weight (the rest 1 - F): a second domain
   (synthetic speech beside real) can come in at a small share without outvoting the first.
4. The model with the head labels the validation side in ``--mode`` once per candidate weight
   of ``--weights`` and share of ``--share`` (the memory learns the fused reads, so each needs
   its own pass). The candidate with the best UA on the ``--select`` conversations is kept; among
   those within ``--tolerance`` of it, the one with the best UA on the other validation
   conversations (then the better select UA, the smaller weight).

Output: the model folder at ``--out`` (its files, the head's two, the source's
``training.json``), and a JSON summary on stdout: data sizes, the head alone's validation UA,
UA per candidate, the chosen weight and share.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np

from dpm_worker.errors import ConfigError
from dpm_worker.metrics import summarize

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "0,0.25,0.5,1,1.5,2,3,4,6,10"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="gold-labelled manifest (the backbone's)")
    parser.add_argument("--out", required=True, help="the new model folder (local or s3://)")
    parser.add_argument(
        "--model", default=None, help="model folder or s3:// URI (default: packaged)"
    )
    parser.add_argument(
        "--conversations",
        default="",
        help="regular expression: only conversation ids it finds (re.search) are read "
        "(default: all)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.12,
        help="share of the conversations held out to choose the weight, as train.val_fraction "
        "(%(default)s; pass the backbone's)",
    )
    parser.add_argument(
        "--val-group",
        default="",
        help="regular expression grouping conversations into one side of the split, as "
        "train.val_group (e.g. 'actor_(\\d+)')",
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed (%(default)s)")
    parser.add_argument(
        "--c", type=float, default=0.5, help="inverse L2 strength of the regression (%(default)s)"
    )
    parser.add_argument(
        "--weights",
        default=DEFAULT_WEIGHTS,
        help="candidate fusion weights, chosen by validation UA (%(default)s)",
    )
    parser.add_argument(
        "--share",
        default=None,
        metavar="REGEX=F[,F...]",
        help="training conversations whose id REGEX finds carry the share F of the fit's "
        "weight, the rest 1 - F (e.g. '^s[er]_=0,0.05,0.1': synthetic speech at a small "
        "share); several shares are candidates, chosen with the weight (default: every "
        "utterance weighs the same)",
    )
    parser.add_argument(
        "--select",
        default="",
        help="regular expression: the validation conversations whose UA chooses the candidate "
        "(default: all); the others break near-ties and are reported",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="select UA within which the other validation conversations decide (%(default)s)",
    )
    parser.add_argument(
        "--mode",
        default="dpm",
        help="labeling mode whose reads the weight is chosen against (%(default)s: the job's)",
    )
    parser.add_argument(
        "--model-id", default=None, help="id of the new model (default: MODEL+head)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (%(default)s)")
    parser.add_argument(
        "--summary-layers",
        default=None,
        metavar="K[,K...]",
        help="read the summary from these encoder blocks (a whisper-units tokenizer: e.g. 2,4); "
        "the units and the backbone are kept, the speakers' shrinkage target is refitted on "
        "the training side (default: the model's own summary)",
    )
    parser.add_argument(
        "--summary-utterances",
        type=int,
        default=2000,
        help="training utterances (evenly spread) that refit the summary's shrinkage target "
        "with --summary-layers (%(default)s)",
    )


def parse_share(text: str | None) -> tuple[re.Pattern[str] | None, list[float | None]]:
    """``"REGEX=0,0.1"`` -> (compiled REGEX, ``[0.0, 0.1]``); None -> (None, ``[None]``).

    Raises:
        ConfigError: no ``=``, a bad expression, or a share outside [0, 1).
    """
    if text is None:
        return None, [None]
    pattern, sep, values = text.rpartition("=")
    if not sep or not pattern:
        raise ConfigError(f"--share must be REGEX=F[,F...], got {text!r}")
    try:
        compiled = re.compile(pattern)
        shares: list[float | None] = [float(v) for v in values.split(",") if v.strip()]
    except re.error as exc:
        raise ConfigError(f"--share: {pattern!r} is not a regular expression: {exc}") from None
    except ValueError:
        raise ConfigError(f"--share needs numbers after '=', got {values!r}") from None
    if not shares or any(not 0.0 <= f < 1.0 for f in shares):  # type: ignore[operator]
        raise ConfigError(f"--share values must be in [0, 1), got {values!r}")
    return compiled, shares


def share_weights(in_share: np.ndarray, share: float | None) -> np.ndarray | None:
    """Per-row weights giving the rows ``in_share`` the share ``share`` of the total (None: all
    alike).

    Raises:
        ConfigError: the share's side or the other is empty.
    """
    if share is None:
        return None
    n_in = int(in_share.sum())
    if n_in == 0 or n_in == in_share.size:
        side = "no" if n_in == 0 else "every"
        raise ConfigError(f"--share finds {side} training utterance; it needs both sides")
    return np.where(in_share, share / n_in, (1.0 - share) / (in_share.size - n_in))


def choose(candidates: list[dict], tolerance: float) -> dict:
    """The candidate (``select`` and ``rest`` UA, ``weight``) with the best ``select`` UA; among
    those within ``tolerance`` of it, the best ``rest`` UA, then ``select``, then the smaller
    weight."""
    best = max(c["select"] for c in candidates)
    near = [c for c in candidates if c["select"] >= best - tolerance]
    return max(near, key=lambda c: (c["rest"] or 0.0, c["select"], -c["weight"]))


def parse_weights(text: str) -> list[float]:
    """``"0,0.5,1"`` -> ``[0.0, 0.5, 1.0]``.

    Raises:
        ConfigError: an entry that is not a number >= 0, or none at all.
    """
    try:
        weights = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise ConfigError(f"--weights must be comma-separated numbers, got {text!r}") from None
    if not weights or any(not w >= 0 for w in weights):
        raise ConfigError(f"--weights must be numbers >= 0, got {text!r}")
    return weights


def run(args: argparse.Namespace) -> int:
    import torch

    from dpm_worker.corpus import read_manifest
    from dpm_worker.memory import LabelingConfig
    from dpm_worker.model import default_model_path, fit_acoustic_head, load_model, save_model
    from dpm_worker.training.token_cache import split_conversations
    from pipelines.eval.corpus import load_corpus

    weights = parse_weights(args.weights)
    share_pattern, shares = parse_share(args.share)
    config = LabelingConfig(mode=args.mode)
    try:
        pattern, select = re.compile(args.conversations), re.compile(args.select)
    except re.error as exc:
        raise ConfigError(f"--conversations/--select: not a regular expression: {exc}") from None
    if not 0.0 <= args.tolerance < 1.0:
        raise ConfigError(f"--tolerance must be in [0, 1), got {args.tolerance}")
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if not hasattr(model.speech_tokenizer, "quantize_with_summaries"):
        raise ConfigError(
            f"the model's speech tokenizer ({type(model.speech_tokenizer).__name__}) gives no "
            "acoustic summaries"
        )
    model.attach_head(None)  # a head being refitted must not read its own old fusion
    model.speech_tokenizer.summaries = True  # type: ignore[attr-defined]
    ids = sorted(set(read_manifest(args.corpus).column("conversation_id").to_pylist()))
    train_ids, val_ids = split_conversations(ids, args.val_fraction, args.seed, args.val_group)
    train = {c for c in train_ids if pattern.search(c)}
    val = {c for c in val_ids if pattern.search(c)}
    if not train or not val or not any(select.search(c) for c in val):
        raise ConfigError(
            f"--conversations {args.conversations!r} / --select {args.select!r} leave "
            f"{len(train)} training and {len(val)} validation conversations "
            f"({sum(bool(select.search(c)) for c in val)} selecting); the head needs all three"
        )
    if share_pattern is not None and len({c for c in train if share_pattern.search(c)}) in (
        0,
        len(train),
    ):
        raise ConfigError(f"--share {args.share!r} must find some training conversations, not all")
    if args.summary_layers:
        model.speech_tokenizer = _refit_summary(model, args, train)
        model.speech_tokenizer.summaries = True  # type: ignore[attr-defined]
    start = time.perf_counter()
    log.info("tokenizing %d + %d conversations", len(train), len(val))
    conversations, errors = load_corpus(args.corpus, model, keep=lambda c: c in train or c in val)
    log.info("tokenized in %.0f s (%d rows failed)", time.perf_counter() - start, len(errors))
    fit_rows = [
        (c.conversation_id, u)
        for c in conversations
        if c.conversation_id in train
        for u in c.utterances
        if u.emotion is not None and u.acoustic is not None
    ]
    summaries = np.stack([u.acoustic for _, u in fit_rows])  # type: ignore[misc]
    emotions = [str(u.emotion) for _, u in fit_rows]
    in_share = np.array([bool(share_pattern and share_pattern.search(c)) for c, _ in fit_rows])
    held = [c for c in conversations if c.conversation_id in val]
    sides = {
        side: [c for c in held if bool(select.search(c.conversation_id)) == (side == "select")]
        for side in ("select", "rest")
    }
    candidates = []
    for share in shares:
        head = fit_acoustic_head(
            summaries, emotions, model.labels, c=args.c,
            sample_weight=share_weights(in_share, share),
        )  # fmt: skip
        for w in weights:  # each candidate labels the validation side: the memory learns it
            model.attach_head(dataclasses.replace(head, weight=w))
            log.info("validation with share %s, weight %s", share, w)
            ua = {side: _validate(model, config, convs) for side, convs in sides.items()}
            candidates.append({"share": share, "weight": w, "head": head, **ua})
    chosen = choose(candidates, args.tolerance)
    head = chosen["head"]
    alone = {
        side: _ua_of(head.log_probs(np.stack([u.acoustic for u in _gold(convs)])), convs, model)
        for side, convs in sides.items()
        if convs
    }
    info = {
        "corpus": args.corpus,
        "conversations": args.conversations,
        "train_conversations": len(train),
        "train_utterances": len(fit_rows),
        "val_conversations": sorted(val),
        "val_utterances": sum(len(_gold(convs)) for convs in sides.values()),
        "select": args.select,
        "failed_rows": len(errors),  # rows that could not be read or tokenized, left out
        "c": args.c,
        "mode": args.mode,
        "share": args.share,
        "val_ua_head_alone": alone["select"],
        "val_ua_head_alone_rest": alone.get("rest"),
        "val_ua_by_weight": {
            str(c["weight"]): c["select"] for c in candidates if c["share"] == chosen["share"]
        },
        "candidates": [
            {k: c[k] for k in ("share", "weight", "select", "rest")} for c in candidates
        ],
        "weight": chosen["weight"],
        "chosen_share": chosen["share"],
    }
    model.attach_head(dataclasses.replace(head, weight=chosen["weight"], info=info))
    model.model_id = args.model_id or f"{model.model_id}+head"
    model.calibration = None  # a new head makes new distributions: calibrate them again
    extra = {}
    source = Path(args.model) if args.model else default_model_path()
    if (source / "training.json").exists():
        extra["training.json"] = (source / "training.json").read_text()
    save_model(model, args.out, extra_files=extra)
    json.dump({"model_id": model.model_id, "out": args.out, **info}, sys.stdout, indent=2)
    print()
    return 0


def _refit_summary(model, args: argparse.Namespace, keep: set[str]):
    """The model's encoder tokenizer reading its summary from ``--summary-layers``, its
    shrinkage target fitted on training utterances (``refit_summary``)."""
    from dpm_worker.corpus import read_manifest, to_rows
    from dpm_worker.speech import refit_summary
    from dpm_worker.worker import read_segments, segment_limit

    try:
        layers = [int(k) for k in args.summary_layers.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(
            f"--summary-layers must be block numbers, got {args.summary_layers!r}"
        ) from None
    if args.summary_utterances < 2:
        raise ConfigError(f"--summary-utterances must be >= 2, got {args.summary_utterances}")
    if not hasattr(model.speech_tokenizer, "summary_encoder"):
        raise ConfigError("--summary-layers needs a whisper-units speech tokenizer")
    rows = [r for r in to_rows(read_manifest(args.corpus)) if r.conversation_id in keep]
    step = max(1, len(rows) // args.summary_utterances)
    by_conv: dict[str, list] = {}
    for row in rows[::step]:
        by_conv.setdefault(row.conversation_id, []).append(row)
    waves, speakers = [], []
    longest = segment_limit(model, None)
    for cid, picked in by_conv.items():
        segments, _ = read_segments(picked, max_segment_s=longest)
        for u in segments:
            if u.samples is not None:
                waves.append(u.samples)
                speakers.append((cid, u.speaker))
    log.info("refitting the summary on blocks %s from %d utterances", layers, len(waves))
    return refit_summary(model.speech_tokenizer, waves, speakers, layers)


def _gold(conversations: list) -> list:
    """The gold-labelled utterances of ``conversations``."""
    return [u for c in conversations for u in c.utterances if u.emotion is not None]


def _validate(model, config, conversations: list) -> float | None:
    """UA of ``model`` labeling ``conversations`` (None without any)."""
    from dpm_worker.memory import label_batched

    if not conversations:
        return None
    labeled = label_batched(model, config, [c.utterances for c in conversations], 8)
    predicted = [r.emotion for rows in labeled for r in rows if r.utterance.emotion is not None]
    gold = [str(u.emotion) for u in _gold(conversations)]
    return round(summarize(gold, predicted, model.labels)["ua"], 4)


def _ua_of(log_probs: np.ndarray, conversations: list, model) -> float:
    """UA of the head's reads ``log_probs`` of the gold utterances of ``conversations``."""
    gold = [str(u.emotion) for u in _gold(conversations)]
    predicted = [model.labels[i] for i in log_probs.argmax(axis=1)]
    return round(summarize(gold, predicted, model.labels)["ua"], 4)
