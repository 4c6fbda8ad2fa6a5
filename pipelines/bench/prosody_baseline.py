"""``dpm bench prosody_baseline`` (also ``python -m pipelines.bench.prosody_baseline``): the
five-statistic logistic regression of issue 11, the bar a model must clear on held-out data.

Per utterance, five prosody statistics are measured from the audio (median pitch, mean loudness,
its spread, voiced fraction, speaking rate; ``separability.utterance_statistics``), each minus
the mean of the same speaker's utterances in that conversation (speaker-relative: an
utterance's pitch means little until the speaker's own voice is known; ``--reference running``:
the mean of the speaker's utterances so far, as a streaming reader has it). A standardised logistic
regression is fitted on a training corpus (its expressive utterances by default: the others do
not render their label) and evaluated on a held-out corpus.

Prints JSON: for the speaker-normalised features and for the raw ones, the held-out expressive
accuracy and UA, UA over all utterances and non-expressive accuracy; with ``--group-by`` the
same per value of a manifest column (engine, voice_family, cue_mix).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dpm_worker.corpus import read_manifest
from dpm_worker.errors import BadInputError, ConfigError
from dpm_worker.metrics import summarize
from pipelines.bench.command import print_report
from pipelines.bench.separability import STATISTICS, corpus_features, utterance_statistics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, help="training corpus folder (local)")
    parser.add_argument("--test", required=True, help="held-out corpus folder (local)")
    parser.add_argument(
        "--group-by", default=None, help="comma-separated columns: also report per value of each"
    )
    parser.add_argument(
        "--train-on",
        choices=("expressive", "all"),
        default="expressive",
        help="training utterances (%(default)s)",
    )
    parser.add_argument(
        "--reference",
        choices=("conversation", "running"),
        default="conversation",
        help="the speaker mean subtracted: over the whole conversation (the issue's baseline) "
        "or over the speaker's utterances so far, the current one included (causal, as a "
        "streaming reader sees it) (%(default)s)",
    )
    parser.add_argument("--json", default=None, help="also write the JSON here")


def _speaker_keys(table: pa.Table) -> list[str]:
    return [
        f"{c}\0{s}"
        for c, s in zip(
            table.column("conversation_id").to_pylist(),
            table.column("speaker").to_pylist(),
            strict=True,
        )
    ]


def speaker_relative_running(x: np.ndarray, table: pa.Table) -> np.ndarray:
    """Each row minus the mean of its speaker's rows so far (itself included) in the same
    conversation; the rows are in dialogue order within each conversation (a manifest's are)."""
    sums: dict[str, tuple[np.ndarray, int]] = {}
    out = np.empty_like(x)
    for i, key in enumerate(_speaker_keys(table)):
        total, n = sums.get(key, (np.zeros(x.shape[1]), 0))
        sums[key] = (total + x[i], n + 1)
        out[i] = x[i] - (total + x[i]) / (n + 1)
    return out


def speaker_relative(x: np.ndarray, table: pa.Table) -> np.ndarray:
    """Each row minus the mean of its speaker's rows in the same conversation."""
    keys = _speaker_keys(table)
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
    group_by: tuple[str, ...] = (),
    train_on: str = "expressive",
    reference: str = "conversation",
) -> dict[str, Any]:
    """Fit the baseline on ``train_dir`` and score it on ``test_dir``; see the module docstring."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = read_manifest(train_dir), read_manifest(test_dir)
    missing = [c for c in group_by if c not in test.column_names]
    if missing:
        raise BadInputError(f"--group-by {missing} not columns of the test manifest", test_dir)
    labels = tuple(sorted(set(train.column("emotion").to_pylist()) - {None}))
    x_train_raw = corpus_features(train_dir, train, utterance_statistics)
    x_test_raw = corpus_features(test_dir, test, utterance_statistics)
    y_train = np.asarray(train.column("emotion").to_pylist(), dtype=object)
    y_test = np.asarray(test.column("emotion").to_pylist(), dtype=object)
    fit_rows = _expressive(train) if train_on == "expressive" else np.ones(len(y_train), bool)
    fit_rows &= np.asarray([y is not None for y in y_train])
    scored = np.asarray([y is not None for y in y_test])
    expressive = _expressive(test)[scored]
    groups = {c: np.asarray([str(v) for v in test.column(c).to_pylist()])[scored] for c in group_by}
    report: dict[str, Any] = {
        "features": list(STATISTICS),
        "train": {"corpus": train_dir, "utterances": int(fit_rows.sum()), "train_on": train_on},
        "test": {"corpus": test_dir, "utterances": int(scored.sum())},
        "reference": reference,
    }
    relative = speaker_relative if reference == "conversation" else speaker_relative_running
    for name, x_train, x_test in (
        (
            "speaker_normalised",
            relative(x_train_raw, train),
            relative(x_test_raw, test),
        ),
        ("raw", x_train_raw, x_test_raw),
    ):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(x_train[fit_rows], y_train[fit_rows])
        pred = model.predict(x_test[scored])
        gold = y_test[scored]
        block = _scores(gold, pred, expressive, labels)
        for column, of in groups.items():
            block[f"by_{column}"] = {
                value: _scores(
                    gold[of == value], pred[of == value], expressive[of == value], labels
                )
                for value in sorted(set(of))
            }
        report[name] = block
    return report


def run(args: argparse.Namespace) -> int:
    for folder in (args.train, args.test):
        if not Path(folder).is_dir():
            raise ConfigError(f"expected a local corpus folder, got {folder!r}")
    columns = tuple(c.strip() for c in (args.group_by or "").split(",") if c.strip())
    report = evaluate_baseline(args.train, args.test, columns, args.train_on, args.reference)
    print_report(report, args.json)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="prosody_baseline", description=__doc__)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
