"""``dpm calibrate``: fit a model's temperature on labelled speech and save a calibrated copy.

    dpm calibrate --model M --corpus VAL_MANIFEST [--mode dpm] --out NEW_MODEL [--model-id ID]

Labels the gold-labelled manifest in-process exactly as ``dpm eval`` does (the same reading,
tokenizing and labeling engine, with any calibration the model already has switched off), fits
the temperature ``T`` that minimizes the gold labels' negative log-likelihood
(``dpm_worker.model.fit_temperature``), and copies the model folder to ``--out`` with
``calibration.json`` added (``dpm_worker.model.save_calibrated``). Labels never change; the
confidence and ``p_*`` columns of ``dpm label`` and ``dpm eval`` with the new folder do.

Prints (and with ``--json`` writes) ``{"temperature", "mode", "n", "ece_before", "ece_after",
"nll_before", "nll_after", "mean_confidence_before", "mean_confidence_after", "accuracy", ...}``.
Fit on speech like the speech to be labelled (language, channel, speaking style), from speakers
that will not be scored with it: a temperature fitted on one corpus does not carry to another.
Exit 2 on bad arguments (an unknown mode, a manifest without gold labels, an existing --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np

from dpm_worker.errors import ConfigError
from dpm_worker.memory import MODES
from dpm_worker.metrics import expected_calibration_error
from dpm_worker.storage import is_remote
from pipelines.eval.config import add_labeling_arguments, load_labeling_config
from pipelines.eval.corpus import label_conversations, load_corpus

log = logging.getLogger(__name__)
MIN_UTTERANCES = 20  # fewer gold-labelled utterances say little about a temperature


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="model folder or s3:// URI (default: packaged)"
    )
    parser.add_argument(
        "--corpus", required=True, help="gold-labelled validation manifest (file or folder)"
    )
    parser.add_argument(
        "--mode", default="dpm", help="labeling mode to fit in (%(default)s; as dpm label runs)"
    )
    parser.add_argument("--out", required=True, help="the new model folder (local or s3://)")
    parser.add_argument("--model-id", default=None, help="the new model's id (default: ID+cal)")
    parser.add_argument("--json", default=None, help="also write the fit's summary here")
    parser.add_argument("--slots", type=int, default=8, help="conversations labeled at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (%(default)s)")
    add_labeling_arguments(parser)


def fit_summary(probs: np.ndarray, gold: np.ndarray, temperature: float) -> dict:
    """ECE, NLL and mean confidence of ``probs`` before and after ``temperature``."""
    from dpm_worker.model import apply_temperature
    from dpm_worker.model.calibration import temperature_nll

    after = apply_temperature(probs, temperature)
    return {
        "temperature": temperature,
        "n": int(len(gold)),
        "accuracy": float(np.mean(probs.argmax(axis=1) == gold)),
        "ece_before": expected_calibration_error(probs, gold),
        "ece_after": expected_calibration_error(after, gold),
        "nll_before": temperature_nll(probs, gold, 1.0),
        "nll_after": temperature_nll(probs, gold, temperature),
        "mean_confidence_before": float(probs.max(axis=1).mean()),
        "mean_confidence_after": float(after.max(axis=1).mean()),
    }


def run(args: argparse.Namespace) -> int:
    import torch

    from dpm_worker.model import Calibration, fit_temperature, load_model, save_calibrated

    if args.mode not in MODES:
        raise ConfigError(f"--mode must be one of {MODES}, got {args.mode!r}")
    if args.slots < 1 or args.threads < 1:
        raise ConfigError(f"--slots and --threads must be >= 1, got {args.slots}, {args.threads}")
    if not is_remote(args.out) and Path(args.out).exists():
        raise ConfigError(f"--out {args.out} exists; calibrate into a new folder")
    labeling = load_labeling_config(args, {"labeling.mode": args.mode})
    config = dataclasses.replace(labeling, mode=args.mode)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    previous = model.calibration
    model.calibration = None  # fit on what the model itself emits
    conversations, errors = load_corpus(args.corpus, model)
    if errors:
        log.warning("%d row(s) could not be read and are left out of the fit", len(errors))
    result = label_conversations(model, conversations, config, args.slots)
    labels = model.vocab.labels
    scored = [i for i, g in enumerate(result.gold) if g is not None]
    if len(scored) < MIN_UTTERANCES:
        raise ConfigError(
            f"{args.corpus} has {len(scored)} gold-labelled utterances that could be read; "
            f"a temperature needs at least {MIN_UTTERANCES}"
        )
    probs = np.stack([result.probs[i] for i in scored]).astype(np.float64)
    gold = np.asarray([labels.index(str(result.gold[i])) for i in scored])
    temperature = fit_temperature(probs, gold)
    summary = fit_summary(probs, gold, temperature)
    summary.update(
        mode=args.mode,
        fitted_on=args.corpus,
        conversations=len(conversations),
        failed_rows=len(errors),
        source_model=model.model_id,
        source_fingerprint=model.fingerprint,
        replaced_temperature=None if previous is None else previous.temperature,
    )
    model_id = args.model_id or f"{model.model_id}+cal"
    calibration = Calibration(
        temperature=temperature,
        mode=args.mode,
        fitted_on=args.corpus,
        ece_before=summary["ece_before"],
        ece_after=summary["ece_after"],
        info={k: v for k, v in summary.items() if k not in ("temperature", "mode", "fitted_on")},
    )
    save_calibrated(args.model, calibration, args.out, model_id=model_id)
    summary.update(model_id=model_id, out=args.out)
    text = json.dumps(summary, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    print(
        f"calibrated {model.model_id} -> {model_id}: T={temperature:.3f}, ECE "
        f"{summary['ece_before']:.3f} -> {summary['ece_after']:.3f} on {summary['n']} "
        f"utterances ({args.mode}); wrote {args.out}",
        file=sys.stderr,
    )
    return 0
