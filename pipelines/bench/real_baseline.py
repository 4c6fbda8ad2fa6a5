"""``dpm bench real_baseline``: the textbook reference a model must beat on real speech.

openSMILE's 88 eGeMAPSv02 functionals per utterance (``dpm_worker/speech/smile.py``) and a
class-balanced logistic regression (C = 0.5 on standardised features), trained on one manifest
and tested on another, in two variants:

- ``raw``: the features as they are;
- ``speaker_z``: each feature z-normalised over the utterances of the same speaker in the same
  conversation (in each manifest on its own), the field's standard speaker normalisation. It
  sees all of a speaker's utterances, as a batch job can.

The model (``--model``, default the packaged one) is scored on the test manifest in the same
run, mode by mode, and every mode is compared with both baselines on the same utterances
(paired bootstrap over conversations), so the JSON holds the bar and the model side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator

import numpy as np

from dpm_worker.audio import SAMPLE_RATE
from dpm_worker.errors import BadInputError, ConfigError
from dpm_worker.speech.smile import egemaps_functionals
from dpm_worker.training import iter_waveforms
from dpm_worker.utterance import Utterance
from pipelines.bench.command import print_report
from pipelines.eval.config import add_labeling_arguments
from pipelines.eval.results import ModeResult, compare, score

VARIANTS = ("raw", "speaker_z")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, help="training manifest (gold labels)")
    parser.add_argument("--test", required=True, help="held-out manifest (gold labels)")
    parser.add_argument("--model", default=None, help="model folder (default: packaged)")
    parser.add_argument(
        "--mode",
        default="utterance,window,dpm,prior-ema",
        help="the model's modes scored on --test (%(default)s); 'none' scores no model",
    )
    parser.add_argument("--slots", type=int, default=8, help="model: conversations at once")
    parser.add_argument("--c", type=float, default=0.5, help="inverse regularisation C")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the model")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    add_labeling_arguments(parser)


def corpus_functionals(
    manifest: str, labels: tuple[str, ...]
) -> tuple[np.ndarray, list[Utterance]]:
    """``[n, 88]`` functionals of every gold-labelled utterance in ``labels``, and the
    utterances (samples dropped)."""
    rows, kept = [], []
    for utt in _labelled(iter_waveforms(manifest), labels):
        assert utt.samples is not None  # iter_waveforms decodes every utterance
        rows.append(egemaps_functionals(utt.samples, SAMPLE_RATE))
        kept.append(dataclasses.replace(utt, samples=None))
    if not kept:
        raise BadInputError(f"no utterances labelled with one of {list(labels)}", manifest)
    return np.stack(rows), kept


def _labelled(utterances: Iterator[Utterance], labels: tuple[str, ...]) -> Iterator[Utterance]:
    return (u for u in utterances if u.emotion in labels)


def speaker_z(features: np.ndarray, utterances: list[Utterance]) -> np.ndarray:
    """Each row z-normalised over the rows of its (conversation, speaker)."""
    out = np.empty_like(features)
    keys = [(u.conversation_id, u.speaker) for u in utterances]
    for key in set(keys):
        rows = [i for i, k in enumerate(keys) if k == key]
        block = features[rows]
        std = block.std(axis=0)
        out[rows] = (block - block.mean(axis=0)) / np.where(std > 1e-9, std, 1.0)
    return out


def fit_predict(train: np.ndarray, gold: list[str], test: np.ndarray, c: float) -> list[str]:
    """Standardise, fit a class-balanced logistic regression, predict the test rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=c, class_weight="balanced", max_iter=5000),
    )
    model.fit(np.nan_to_num(train), gold)
    return [str(p) for p in model.predict(np.nan_to_num(test))]


def run(args: argparse.Namespace) -> int:
    from pipelines.eval.config import load_labeling_config
    from pipelines.eval.evaluate import label_conversations, load_conversations, parse_modes

    labeling = load_labeling_config(args, {})
    modes = [] if args.mode.strip() == "none" else parse_modes(args.mode)
    if args.c <= 0:
        raise ConfigError(f"--c must be > 0, got {args.c}")
    model = None
    if modes:
        import torch

        from dpm_worker.model import load_model

        torch.set_num_threads(args.threads)
        model = load_model(args.model)
    labels = model.vocab.labels if model is not None else ("neutral", "happy", "sad", "angry")
    print(f"real_baseline: functionals of {args.train}", file=sys.stderr, flush=True)
    x_train, u_train = corpus_functionals(args.train, labels)
    print(f"real_baseline: functionals of {args.test}", file=sys.stderr, flush=True)
    x_test, u_test = corpus_functionals(args.test, labels)
    gold_train = [str(u.emotion) for u in u_train]
    inputs = {
        "raw": (x_train, x_test),
        "speaker_z": (speaker_z(x_train, u_train), speaker_z(x_test, u_test)),
    }
    results: dict[str, ModeResult] = {}
    for variant, (train, test) in inputs.items():
        pred = fit_predict(train, gold_train, test, args.c)
        results[f"baseline_{variant}"] = _as_result(u_test, pred)
    if model is not None:
        conversations = load_conversations(args.test, model)
        keys = [(u.conversation_id, u.utterance_index) for u in u_test]
        for mode in modes:
            config = dataclasses.replace(labeling, mode=mode)
            print(f"real_baseline: model mode {mode}", file=sys.stderr, flush=True)
            labeled = label_conversations(model, conversations, config, args.slots)
            results[mode] = _aligned(labeled, keys)
    report = {
        "train": args.train,
        "test": args.test,
        "model": None if model is None else model.model_id,
        "n_train": len(u_train),
        "n_test": len(u_test),
        "c": args.c,
        "scores": {
            name: _brief(score(r, labels, 10, args.bootstrap)) for name, r in results.items()
        },
        "model_minus_baseline": {
            f"{mode}-baseline_{variant}": _brief_diff(
                compare(results[mode], results[f"baseline_{variant}"], labels, args.bootstrap)
            )
            for mode in modes
            for variant in VARIANTS
        },
    }
    print_report(report, args.json)
    return 0


def _as_result(utterances: list[Utterance], pred: list[str]) -> ModeResult:
    result = ModeResult()
    for u, p in zip(utterances, pred, strict=True):
        # not timed (ms 0): the baseline's cost is the features'
        result.add(u, p, position=u.utterance_index)
    return result


def _aligned(labeled: ModeResult, keys: list[tuple[str, int]]) -> ModeResult:
    """The model's outcomes in the baseline's utterance order."""
    position = {
        key: i
        for i, key in enumerate(zip(labeled.conversation_id, labeled.utterance_index, strict=True))
    }
    missing = [key for key in keys if key not in position]
    if missing:
        raise BadInputError(
            f"the model did not score {len(missing)} of the baseline's utterances, e.g. "
            f"{missing[0]}",
            "",
        )
    return labeled.subset([position[key] for key in keys])


def _brief(block: dict) -> dict:
    keys = ("n", "wa", "ua", "ua_ci", "wf1", "per_class", "confusion")
    return {k: block[k] for k in keys if k in block}


def _brief_diff(block: dict) -> dict:
    return {k: block[k] for k in ("ua_diff", "ua_diff_ci", "wa_diff", "wa_diff_ci")}
