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
   references). The model with the head labels the validation side in ``--mode`` once per
   candidate of ``--weights`` (the memory learns the fused reads, so each weight needs its
   own pass); the weight with the best UA is kept (ties: the smaller).

Output: the model folder at ``--out`` (its files, the head's two, the source's
``training.json``), and a JSON summary on stdout: data sizes, the head alone's validation UA,
UA per candidate weight, the chosen weight.
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
        "--mode",
        default="dpm",
        help="labeling mode whose reads the weight is chosen against (%(default)s: the job's)",
    )
    parser.add_argument(
        "--model-id", default=None, help="id of the new model (default: MODEL+head)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (%(default)s)")


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
    from dpm_worker.memory import LabelingConfig, label_batched
    from dpm_worker.model import default_model_path, fit_acoustic_head, load_model, save_model
    from dpm_worker.training.token_cache import split_conversations
    from pipelines.eval.evaluate import load_corpus

    weights = parse_weights(args.weights)
    config = LabelingConfig(mode=args.mode)
    try:
        pattern = re.compile(args.conversations)
    except re.error as exc:
        raise ConfigError(f"--conversations is not a regular expression: {exc}") from None
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
    if not train or not val:
        raise ConfigError(
            f"--conversations {args.conversations!r} leaves {len(train)} training and "
            f"{len(val)} validation conversations; the head needs both"
        )
    start = time.perf_counter()
    log.info("tokenizing %d + %d conversations", len(train), len(val))
    conversations, errors = load_corpus(args.corpus, model, keep=lambda c: c in train or c in val)
    log.info("tokenized in %.0f s (%d rows failed)", time.perf_counter() - start, len(errors))
    fit_rows = [u for c in conversations if c.conversation_id in train for u in c.utterances]
    fit_rows = [u for u in fit_rows if u.emotion is not None and u.acoustic is not None]
    head = fit_acoustic_head(
        np.stack([u.acoustic for u in fit_rows if u.acoustic is not None]),
        [str(u.emotion) for u in fit_rows],
        model.labels,
        c=args.c,
    )
    held = [c for c in conversations if c.conversation_id in val]
    gold = [str(u.emotion) for c in held for u in c.utterances if u.emotion is not None]
    alone = head.log_probs(
        np.stack(
            [u.acoustic for c in held for u in c.utterances if u.emotion is not None]  # type: ignore[misc]
        )
    )
    by_weight = {}
    for w in weights:  # each weight labels the validation side: the memory learns its reads
        model.attach_head(dataclasses.replace(head, weight=w))
        log.info("validation with weight %s", w)
        labeled = label_batched(model, config, [c.utterances for c in held], 8)
        predicted = [r.emotion for rows in labeled for r in rows if r.utterance.emotion is not None]
        by_weight[w] = round(_ua(gold, predicted, model.labels), 4)
    chosen = max(weights, key=lambda w: (by_weight[w], -w))
    info = {
        "corpus": args.corpus,
        "conversations": args.conversations,
        "train_conversations": len(train),
        "train_utterances": len(fit_rows),
        "val_conversations": sorted(val),
        "val_utterances": len(gold),
        "failed_rows": len(errors),  # rows that could not be read or tokenized, left out
        "c": args.c,
        "mode": args.mode,
        "val_ua_head_alone": round(
            _ua(gold, [model.labels[i] for i in alone.argmax(axis=1)], model.labels),
            4,
        ),
        "val_ua_by_weight": {str(w): ua for w, ua in by_weight.items()},
        "weight": chosen,
    }
    model.attach_head(dataclasses.replace(head, weight=chosen, info=info))
    model.model_id = args.model_id or f"{model.model_id}+head"
    extra = {}
    source = Path(args.model) if args.model else default_model_path()
    if (source / "training.json").exists():
        extra["training.json"] = (source / "training.json").read_text()
    save_model(model, args.out, extra_files=extra)
    json.dump({"model_id": model.model_id, "out": args.out, **info}, sys.stdout, indent=2)
    print()
    return 0


def _ua(gold: list[str], predicted: list[str], labels: tuple[str, ...]) -> float:
    """Unweighted accuracy (mean recall over the labels present), as ``dpm eval`` scores it."""
    from dpm_worker.metrics import confusion_matrix, ua_from_confusion

    return float(ua_from_confusion(confusion_matrix(gold, predicted, labels)))
