"""``dpm bench memory_headroom``: oracle memories of persisting moods over a model's reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dpm_worker.corpus import read_ravdess, write_manifest
from dpm_worker.utterance import Utterance
from pipelines.bench.memory_headroom import (
    TAUS,
    filter_reads,
    oracle_results,
    previous_gold_reads,
    speaker_turns,
    stay_rate,
)
from pipelines.cli import main
from pipelines.eval.results import ModeResult
from tests.fixtures.corpus_trees import build_ravdess_tree

LABELS = ("neutral", "happy", "sad", "angry")
CONFIDENT = {0: [0.97, 0.01, 0.01, 0.01], 2: [0.01, 0.01, 0.97, 0.01]}
WEAK_HAPPY = [0.3, 0.4, 0.2, 0.1]  # leans happy, but not by much


def reads(rows: list[tuple[str, str, str | None, list[float]]]) -> ModeResult:
    """A ModeResult of (conversation, speaker, gold, probs) rows, in utterance order."""
    result = ModeResult()
    for i, (conv, speaker, gold, probs) in enumerate(rows):
        p = np.asarray(probs)
        result.add(
            Utterance(conv, i, speaker, "", emotion=gold),
            LABELS[int(p.argmax())],
            position=i,
            probs=p,
        )
    return result


def test_stay_rate_counts_each_speakers_turns_on_their_own():
    # a: sad, sad, neutral (one kept, one moved); b, between a's turns: happy, happy (kept)
    result = reads(
        [
            ("c", "a", "sad", CONFIDENT[2]),
            ("c", "b", "happy", WEAK_HAPPY),
            ("c", "a", "sad", CONFIDENT[2]),
            ("c", "b", "happy", WEAK_HAPPY),
            ("c", "a", "neutral", CONFIDENT[0]),
        ]
    )
    turns = speaker_turns(result)
    assert sorted(map(tuple, turns)) == [(0, 2, 4), (1, 3)]
    assert stay_rate(result.gold, turns) == pytest.approx(2 / 3)


def test_without_persistence_the_filter_is_the_reads():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=12)
    for tau in TAUS:
        np.testing.assert_array_equal(filter_reads(probs, 0.25, tau), probs.argmax(axis=1))


def test_persistence_overrides_a_weak_read_between_confident_ones():
    probs = np.array([CONFIDENT[2], CONFIDENT[2], WEAK_HAPPY, CONFIDENT[0]])
    assert filter_reads(probs, 0.9, 1.0).tolist() == [2, 2, 2, 0]
    assert filter_reads(probs, 0.25, 1.0).tolist() == [2, 2, 1, 0]


def test_previous_gold_prior_follows_the_true_past():
    probs = np.array([WEAK_HAPPY, WEAK_HAPPY, WEAK_HAPPY])
    # first turn: no past, the read; then the prior sits on the previous gold (sad, then none)
    assert previous_gold_reads(probs, [2, None, 0], 0.9, 1.0).tolist() == [1, 2, 1]


def test_oracles_keep_the_best_tau():
    from dpm_worker.metrics import confusion_matrix, ua_from_confusion

    rng = np.random.default_rng(3)
    gold = [LABELS[int(g)] for g in np.repeat(rng.integers(0, 4, 8), 4)]
    rows = []
    for g in gold:
        p = rng.dirichlet(np.ones(4) * 0.5)
        p[LABELS.index(g)] += 0.4
        rows.append(("c", "a", g, list(p / p.sum())))
    result = reads(rows)
    stay = stay_rate(result.gold, speaker_turns(result))
    best = oracle_results(result, LABELS, stay)

    def ua(pred):
        return ua_from_confusion(confusion_matrix(result.gold, pred, LABELS))

    probs = np.stack(result.probs)
    for tau in TAUS:
        other = [LABELS[i] for i in filter_reads(probs, stay, tau)]
        assert ua(best["filter"][0].pred) >= ua(other) - 1e-12
    assert best["filter"][1] in TAUS and best["previous_gold"][1] in TAUS
    assert ua(best["previous_gold"][0].pred) > ua(result.pred)  # the true past helps here


def test_bench_reports_the_oracles_beside_the_model(tmp_path):
    root = build_ravdess_tree(tmp_path, actors=(19,))
    table, _ = read_ravdess(str(root), actors=[19], order="inertia")
    write_manifest(table, str(tmp_path / "m.parquet"))
    out = tmp_path / "headroom.json"
    argv = ["bench", "memory_headroom", "--corpus", str(tmp_path / "m.parquet")]
    assert main([*argv, "--slots", "1", "--bootstrap", "50", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    gold = table.column("emotion").to_pylist()
    kept = sum(a == b for a, b in zip(gold, gold[1:], strict=False))
    assert report["gold_stay_rate"] == pytest.approx(kept / (len(gold) - 1), abs=1e-4)
    assert report["n_utterances"] == 36
    scores = report["scores"]
    assert set(scores) == {"utterance", "filter", "previous_gold", "dpm"}
    for name, diff in report["minus_utterance"].items():
        assert diff["ua_diff"] == pytest.approx(scores[name]["ua"] - scores["utterance"]["ua"])
        lo, hi = diff["ua_diff_ci"]
        assert lo <= diff["ua_diff"] <= hi
    assert set(report["tau"].values()) <= set(TAUS)
