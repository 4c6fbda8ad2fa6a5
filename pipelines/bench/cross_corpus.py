"""``dpm bench cross_corpus``: what models and linear references read on corpora they never heard.

A model is worth what it reads on another studio, language and speaking style (CORPORA.md,
cross-corpus protocol). Every ``--test NAME[:ORDER]=MANIFEST`` is scored:

- by each linear reference (``--features``, ``pipelines/bench/references.py``, speaker-z),
  fitted **leave-one-corpus-out**: on every ``--train NAME=MANIFEST`` whose NAME is not the test
  corpus's (corpora weighed alike); and, where a training manifest of the same corpus holds
  other speakers (RAVDESS actors 01-18 against 19-24), also **in-corpus**, on all of them less
  the test's speakers;
- by each ``--model LABEL=FOLDER`` in each ``--mode``, with UA, its conversation-bootstrap
  interval and the expected calibration error of the top label (10 bins); which corpora a
  model trained on is for the reader to say (the model card): the bench scores every cell.

Paired differences (95% conversation bootstrap) are printed for: every model and mode against
the first model in the same mode (``v10 dpm - v9 dpm``); ``dpm - utterance`` within each model
(what the memory adds or costs); and every model's modes against every reference of the same
test (left out and in-corpus).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import numpy as np

from dpm_worker.errors import ConfigError
from dpm_worker.utterance import Utterance
from pipelines.bench.command import print_report
from pipelines.bench.references import FEATURES, corpus_features, fit_predict, speaker_z
from pipelines.eval.config import add_labeling_arguments
from pipelines.eval.results import ModeResult, compare, score

DEFAULT_LABELS = ("neutral", "happy", "sad", "angry")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--test",
        action="append",
        required=True,
        metavar="NAME[:ORDER]=MANIFEST",
        help="a held-out manifest of corpus NAME (repeat; e.g. turev:inertia=t.parquet)",
    )
    parser.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="NAME=MANIFEST",
        help="a training manifest of corpus NAME for the references (repeat)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="LABEL=FOLDER",
        help="a model to score (repeat; FOLDER 'default' is the packaged one); the first is "
        "the one the others are compared with",
    )
    parser.add_argument("--mode", default="utterance,dpm", help="the models' modes (%(default)s)")
    parser.add_argument(
        "--features",
        default="functionals,encoder,encoder+functionals",
        help=f"references, from {FEATURES}; 'none' fits none (%(default)s)",
    )
    parser.add_argument("--c", type=float, default=0.5, help="references' inverse regularisation")
    parser.add_argument("--slots", type=int, default=8, help="models: conversations at once")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the models")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    add_labeling_arguments(parser)


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{flag} takes NAME=PATH, got {value!r}")
        out.append((name, path))
    return out


def run(args: argparse.Namespace) -> int:
    from pipelines.eval.config import load_labeling_config
    from pipelines.eval.evaluate import parse_modes

    tests = _pairs(args.test, "--test")
    trains = _pairs(args.train, "--train")
    models = _pairs(args.model, "--model")
    features = [] if args.features.strip() == "none" else args.features.split(",")
    bad = [f for f in features if f not in FEATURES]
    if bad:
        raise ConfigError(f"--features must list references from {FEATURES}, got {bad}")
    if features and not trains:
        raise ConfigError("references need --train manifests (or --features none)")
    if args.c <= 0:
        raise ConfigError(f"--c must be > 0, got {args.c}")
    modes = parse_modes(args.mode)
    labeling = load_labeling_config(args, {})
    report: dict[str, Any] = {"tests": {}, "models": dict(models), "modes": modes}
    results: dict[str, dict[str, ModeResult]] = {name: {} for name, _ in tests}
    extracted: dict = {}  # (manifest, base feature) -> (features, utterances), read once
    for feature in features:
        _references(feature, tests, trains, args.c, results, extracted)
    for label, folder in models:
        _models(label, folder, tests, modes, labeling, args, results)
    for name, path in tests:
        report["tests"][name] = _table(name, path, results[name], models, modes, args.bootstrap)
    print_report(report, args.json)
    return 0


def _corpus(name: str) -> str:
    return name.partition(":")[0]


def _references(
    feature: str,
    tests: list[tuple[str, str]],
    trains: list[tuple[str, str]],
    c: float,
    results: dict[str, dict[str, ModeResult]],
    extracted: dict,
) -> None:
    """Fit ``feature``'s reference leave-one-corpus-out (and in-corpus) for every test."""
    _say(f"features {feature}")
    train_sets = {name: _z(*_features(path, feature, extracted)) for name, path in trains}
    for name, path in tests:
        x_test, u_test = _z(*_features(path, feature, extracted))
        held = _corpus(name)
        fits = {"leave_out": {n: train_sets[n] for n in train_sets if n != held}}
        if held in train_sets:
            # in-corpus: the corpus's own training side, less any speaker of the test (a
            # reference never reads the voices it is scored on)
            voices = {u.speaker for u in u_test}
            x, u = train_sets[held]
            rows = [i for i, v in enumerate(u) if v.speaker not in voices]
            if rows:
                fits["in_corpus"] = {**fits["leave_out"], held: (x[rows], [u[i] for i in rows])}
        for kind, sets in fits.items():
            if not sets:
                continue
            x = np.concatenate([xs for xs, _ in sets.values()])
            gold = [str(v.emotion) for _, us in sets.values() for v in us]
            groups = [n for n, (_, us) in sets.items() for _ in us]
            pred = fit_predict(x, gold, x_test, c, groups)
            results[name][f"ref_{feature}_{kind}"] = _as_result(u_test, pred)


def _features(path: str, feature: str, extracted: dict) -> tuple[np.ndarray, list[Utterance]]:
    """``corpus_features`` of ``path``, each base feature extracted once per manifest
    (``encoder+functionals`` joins the two)."""
    parts = []
    for base in feature.split("+"):
        if (path, base) not in extracted:
            extracted[path, base] = corpus_features(path, DEFAULT_LABELS, base)
        parts.append(extracted[path, base])
    return np.concatenate([x for x, _ in parts], axis=1), parts[0][1]


def _z(x: np.ndarray, utterances: list[Utterance]) -> tuple[np.ndarray, list[Utterance]]:
    return speaker_z(x, utterances), utterances


def _models(
    label: str,
    folder: str,
    tests: list[tuple[str, str]],
    modes: list[str],
    labeling,
    args: argparse.Namespace,
    results: dict[str, dict[str, ModeResult]],
) -> None:
    import torch

    from dpm_worker.model import load_model
    from pipelines.eval.corpus import label_conversations, load_conversations

    torch.set_num_threads(args.threads)
    model = load_model(None if folder == "default" else folder)
    for name, path in tests:
        _say(f"model {label} on {name}")
        conversations = load_conversations(path, model)
        for mode in modes:
            config = dataclasses.replace(labeling, mode=mode)
            results[name][f"{label} {mode}"] = label_conversations(
                model, conversations, config, args.slots
            )


def _table(
    name: str,
    path: str,
    rows: dict[str, ModeResult],
    models: list[tuple[str, str]],
    modes: list[str],
    n_boot: int,
) -> dict[str, Any]:
    """One test corpus's block: every row's scores and the paired differences."""
    labels = DEFAULT_LABELS
    scores = {}
    for row, result in rows.items():
        block = score(result, labels, 10, n_boot)
        keys = ("n", "ua", "ua_ci", "wa", "ece", "ece_ci", "mean_confidence")
        scores[row] = {k: block[k] for k in keys if block.get(k) is not None}
    diffs = {}
    first = models[0][0] if models else None
    references = [r for r in rows if r.startswith("ref_")]
    for label, _ in models:
        for mode in modes:
            row = f"{label} {mode}"
            if label != first:
                diffs[f"{row} - {first} {mode}"] = _diff(rows[row], rows[f"{first} {mode}"], n_boot)
            if mode != "utterance" and "utterance" in modes:
                diffs[f"{row} - {label} utterance"] = _diff(
                    rows[row], rows[f"{label} utterance"], n_boot
                )
            for ref in references:
                diffs[f"{row} - {ref}"] = _diff(_aligned(rows[row], rows[ref]), rows[ref], n_boot)
    return {"manifest": path, "scores": scores, "differences": diffs}


def _diff(a: ModeResult, b: ModeResult, n_boot: int) -> dict[str, Any]:
    block = compare(a, b, DEFAULT_LABELS, n_boot)
    return {"ua_diff": block["ua_diff"], "ua_diff_ci": block["ua_diff_ci"]}


def _aligned(model: ModeResult, reference: ModeResult) -> ModeResult:
    """The model's outcomes in the reference's utterance order (same utterances)."""
    where = {
        k: i for i, k in enumerate(zip(model.conversation_id, model.utterance_index, strict=True))
    }
    keys = zip(reference.conversation_id, reference.utterance_index, strict=True)
    return model.subset([where[k] for k in keys])


def _as_result(utterances: list[Utterance], pred: list[str]) -> ModeResult:
    result = ModeResult()
    for u, p in zip(utterances, pred, strict=True):
        result.add(u, p, position=u.utterance_index)
    return result


def _say(message: str) -> None:
    print(f"cross_corpus: {message}", file=sys.stderr, flush=True)
