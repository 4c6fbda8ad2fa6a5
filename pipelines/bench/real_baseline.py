"""``dpm bench real_baseline``: the textbook reference a model must beat on real speech.

openSMILE's 88 eGeMAPSv02 functionals per utterance (``dpm_worker/speech/smile.py``) and a
class-balanced logistic regression (C = 0.5 on standardised features), trained on one manifest
and tested on another, in two variants:

- ``raw``: the features as they are;
- ``speaker_z``: each feature z-normalised over the utterances of the same speaker in the same
  conversation (in each manifest on its own), the field's standard speaker normalisation. It
  sees all of a speaker's utterances, as a batch job can.

``--features encoder`` swaps the functionals for the pretrained speech encoder's pooled states
(the linear probe on the same ears a v10+ model hears with), ``encoder+functionals`` puts both
side by side (``pipelines/bench/references.py``). ``--features codes`` swaps the functionals for the histogram of the model's own speech codes
in each utterance (its spectral codes, loudness levels and pitch levels, each as shares of the
utterance's blocks): what a linear reader gets from exactly the tokens the model reads. A
model below it reads less than its own codes carry.

The model (``--model``, default the packaged one) is scored on the test manifest in the same
run, mode by mode, and every mode is compared with both baselines on the same utterances
(paired bootstrap over conversations), so the JSON holds the bar and the model side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from functools import partial

import numpy as np

from dpm_worker.errors import BadInputError, ConfigError
from dpm_worker.speech import EncoderTokenizerConfig
from dpm_worker.speech.tokenizer_config import SpeechTokenizerConfig
from dpm_worker.utterance import Utterance
from pipelines.bench.command import print_report
from pipelines.bench.references import FEATURES as REFERENCE_FEATURES
from pipelines.bench.references import corpus_features, fit_predict, labelled, speaker_z
from pipelines.eval.config import add_labeling_arguments
from pipelines.eval.results import ModeResult, compare, score

VARIANTS = ("raw", "speaker_z")
FEATURES = (*REFERENCE_FEATURES, "codes")


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
    parser.add_argument(
        "--features",
        choices=FEATURES,
        default="functionals",
        help="the baseline's features: eGeMAPS functionals, the pretrained encoder's pooled "
        "states (the linear probe on the ears v10+ hear with), both, or the histogram of the "
        "model's own speech codes (%(default)s)",
    )
    parser.add_argument("--c", type=float, default=0.5, help="inverse regularisation C")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the model")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    add_labeling_arguments(parser)


def corpus_code_histograms(
    manifest: str, conversations: list, model, labels: tuple[str, ...]
) -> tuple[np.ndarray, list[Utterance]]:
    """Per gold-labelled utterance of ``conversations`` (``manifest`` tokenized by ``model``),
    the shares of its blocks in each spectral code, loudness level and pitch level of the
    model's product codebook (``[n, S + E + P]``), or in each unit of an encoder tokenizer
    (``[n, units]``), and the utterances."""
    config = getattr(model.speech_tokenizer, "config", None)
    if isinstance(config, SpeechTokenizerConfig):
        histogram = partial(code_histogram, config=config)
    elif isinstance(config, EncoderTokenizerConfig):
        histogram = partial(unit_histogram, n_units=config.n_units)
    else:
        kind = getattr(model.speech_tokenizer, "kind", type(model.speech_tokenizer).__name__)
        raise ConfigError(
            "--features codes reads the codes of a builtin-product or whisper-units speech "
            f"tokenizer; model {model.model_id} has {kind!r}"
        )
    rows, kept = [], []
    for conversation in conversations:
        for utt in labelled(conversation.utterances, labels):
            if utt.audio_ids is not None:
                rows.append(histogram(utt.audio_ids))
                kept.append(utt)
    if not kept:
        raise BadInputError(f"no utterances labelled with one of {list(labels)}", manifest)
    return np.stack(rows), kept


def unit_histogram(codes: np.ndarray, n_units: int) -> np.ndarray:
    """The shares of an utterance's blocks in each of ``n_units`` encoder units."""
    codes = np.asarray(codes, dtype=np.int64)
    return np.bincount(codes, minlength=n_units).astype(np.float64) / max(1, codes.size)


def code_histogram(codes: np.ndarray, config: SpeechTokenizerConfig) -> np.ndarray:
    """The factors of product codes (``(spectral * E + energy) * P + pitch``) as histograms,
    each normalised to shares of the blocks."""
    codes = np.asarray(codes, dtype=np.int64)
    pitch = codes % config.n_pitch
    energy = (codes // config.n_pitch) % config.n_energy
    spectral = codes // (config.n_pitch * config.n_energy)
    parts = [
        np.bincount(spectral, minlength=config.n_spectral),
        np.bincount(energy, minlength=config.n_energy),
        np.bincount(pitch, minlength=config.n_pitch),
    ]
    return np.concatenate(parts).astype(np.float64) / max(1, codes.size)


def run(args: argparse.Namespace) -> int:
    from pipelines.eval.config import load_labeling_config
    from pipelines.eval.corpus import label_conversations, load_conversations
    from pipelines.eval.evaluate import parse_modes

    labeling = load_labeling_config(args, {})
    modes = [] if args.mode.strip() == "none" else parse_modes(args.mode)
    if args.c <= 0:
        raise ConfigError(f"--c must be > 0, got {args.c}")
    model = None
    if modes or args.features == "codes":
        import torch

        from dpm_worker.model import load_model

        torch.set_num_threads(args.threads)
        model = load_model(args.model)
    labels = model.vocab.labels if model is not None else ("neutral", "happy", "sad", "angry")

    tokenized: dict[str, list] = {}  # manifest -> conversations as the model reads them

    def conversations_of(manifest: str) -> list:
        if manifest not in tokenized:
            tokenized[manifest] = load_conversations(manifest, model)
        return tokenized[manifest]

    def features(manifest: str) -> tuple[np.ndarray, list[Utterance]]:
        print(f"real_baseline: {args.features} of {manifest}", file=sys.stderr, flush=True)
        if args.features == "codes":
            return corpus_code_histograms(manifest, conversations_of(manifest), model, labels)
        return corpus_features(manifest, labels, args.features)

    x_train, u_train = features(args.train)
    x_test, u_test = features(args.test)
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
        conversations = conversations_of(args.test)
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
        "features": args.features,
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
