"""``dpm bench prosody_baseline`` (also ``python -m pipelines.bench.prosody_baseline``): the
five-statistic logistic regression of issue 11, the bar a model must clear on held-out data.

Per utterance, five prosody statistics are measured from the audio (median pitch, mean loudness,
its spread, voiced fraction, speaking rate; ``separability.utterance_statistics``), each minus
the mean of the same speaker's utterances in that conversation (speaker-relative: an
utterance's pitch means little until the speaker's own voice is known). A standardised logistic
regression is fitted on a training corpus (its expressive utterances by default: the others do
not render their label) and evaluated on a held-out corpus.

Prints JSON: for the speaker-normalised features and for the raw ones, the held-out expressive
accuracy and UA, UA over all utterances and non-expressive accuracy; with ``--group-by`` the
same per value of a manifest column (engine, voice_family, cue_mix).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dpm_worker.corpus import read_manifest
from dpm_worker.errors import BadInputError, ConfigError
from dpm_worker.metrics import summarize
from pipelines.bench.separability import STATISTICS, corpus_features, utterance_statistics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, help="training corpus folder (local)")
    parser.add_argument("--test", required=True, help="held-out corpus folder (local)")
    parser.add_argument("--group-by", default=None, help="also report per value of this column")
    parser.add_argument(
        "--train-on",
        choices=("expressive", "all"),
        default="expressive",
        help="training utterances (%(default)s)",
    )
    parser.add_argument("--json", default=None, help="also write the JSON here")


def speaker_relative(x: np.ndarray, table: pa.Table) -> np.ndarray:
    """Each row minus the mean of its speaker's rows in the same conversation."""
    keys = [
        f"{c}\0{s}"
        for c, s in zip(
            table.column("conversation_id").to_pylist(),
            table.column("speaker").to_pylist(),
            strict=True,
        )
    ]
    out = np.empty_like(x)
    for key in set(keys):
        mine = np.asarray([k == key for k in keys])
        out[mine] = x[mine] - x[mine].mean(axis=0)
    return out


def _expressive(table: pa.Table) -> np.ndarray:
    if "expressive" not in table.column_names:
        return np.ones(table.num_rows, dtype=bool)
    return np.asarray([bool(v) for v in table.column("expressive").to_pylist()])


def _scores(gold: np.ndarray, pred: np.ndarray, expressive: np.ndarray, labels) -> dict[str, Any]:
    every = summarize(list(gold), list(pred), labels)
    out: dict[str, Any] = {
        "n": every["n"],
        "ua": round(every["ua"], 4),
        "wa": round(every["wa"], 4),
    }
    if expressive.any():
        e = summarize(list(gold[expressive]), list(pred[expressive]), labels)
        out["expressive_n"] = e["n"]
        out["expressive_accuracy"] = round(e["wa"], 4)
        out["expressive_ua"] = round(e["ua"], 4)
    if (~expressive).any():
        out["non_expressive_accuracy"] = round(
            float(np.mean(gold[~expressive] == pred[~expressive])), 4
        )
    return out


def evaluate_baseline(
    train_dir: str,
    test_dir: str,
    group_by: str | None = None,
    train_on: str = "expressive",
) -> dict[str, Any]:
    """Fit the baseline on ``train_dir`` and score it on ``test_dir``; see the module docstring."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = read_manifest(train_dir), read_manifest(test_dir)
    if group_by is not None and group_by not in test.column_names:
        raise BadInputError(
            f"--group-by {group_by!r} is not a column of the test manifest", test_dir
        )
    labels = tuple(sorted(set(train.column("emotion").to_pylist()) - {None}))
    x_train_raw = corpus_features(train_dir, train, utterance_statistics)
    x_test_raw = corpus_features(test_dir, test, utterance_statistics)
    y_train = np.asarray(train.column("emotion").to_pylist(), dtype=object)
    y_test = np.asarray(test.column("emotion").to_pylist(), dtype=object)
    fit_rows = _expressive(train) if train_on == "expressive" else np.ones(len(y_train), bool)
    fit_rows &= np.asarray([y is not None for y in y_train])
    scored = np.asarray([y is not None for y in y_test])
    expressive = _expressive(test)[scored]
    groups = (
        np.asarray([str(v) for v in test.column(group_by).to_pylist()])[scored]
        if group_by is not None
        else None
    )
    report: dict[str, Any] = {
        "features": list(STATISTICS),
        "train": {"corpus": train_dir, "utterances": int(fit_rows.sum()), "train_on": train_on},
        "test": {"corpus": test_dir, "utterances": int(scored.sum())},
    }
    for name, x_train, x_test in (
        (
            "speaker_normalised",
            speaker_relative(x_train_raw, train),
            speaker_relative(x_test_raw, test),
        ),
        ("raw", x_train_raw, x_test_raw),
    ):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(x_train[fit_rows], y_train[fit_rows])
        pred = model.predict(x_test[scored])
        gold = y_test[scored]
        block = _scores(gold, pred, expressive, labels)
        if groups is not None:
            block["by_group"] = {
                value: _scores(gold[groups == value], pred[groups == value],
                               expressive[groups == value], labels)
                for value in sorted(set(groups))
            }  # fmt: skip
        report[name] = block
    return report


def run(args: argparse.Namespace) -> int:
    for folder in (args.train, args.test):
        if not Path(folder).is_dir():
            raise ConfigError(f"expected a local corpus folder, got {folder!r}")
    report = evaluate_baseline(args.train, args.test, args.group_by, args.train_on)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="prosody_baseline", description=__doc__)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
