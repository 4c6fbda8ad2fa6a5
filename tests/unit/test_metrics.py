"""WA / UA / WF1 against scikit-learn, position bins, and the conversation bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from dpm_worker.errors import LabelError
from dpm_worker.metrics import (
    bootstrap_interval,
    by_position,
    confusion_matrix,
    group_confusions,
    position_bins,
    summarize,
    ua_from_confusion,
)

LABELS = ("neutral", "happy", "sad", "angry")


def random_labels(seed: int, n: int, skew: float = 0.0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    gold = rng.choice(LABELS, size=n, p=[0.4, 0.3, 0.2, 0.1]).tolist()
    pred = [g if rng.random() < 0.5 + skew else str(rng.choice(LABELS)) for g in gold]
    return gold, pred


def test_scores_match_scikit_learn() -> None:
    gold, pred = random_labels(0, 500)
    out = summarize(gold, pred, LABELS)
    assert out["n"] == 500
    assert out["wa"] == pytest.approx(accuracy_score(gold, pred))
    assert out["ua"] == pytest.approx(balanced_accuracy_score(gold, pred))
    assert out["wf1"] == pytest.approx(f1_score(gold, pred, average="weighted"))
    assert sum(v["support"] for v in out["per_class"].values()) == 500
    assert np.array(out["confusion"]).sum() == 500


def test_ua_ignores_classes_absent_from_gold() -> None:
    gold = ["happy", "happy", "sad", "sad"]
    pred = ["happy", "neutral", "sad", "sad"]
    assert summarize(gold, pred, LABELS)["ua"] == pytest.approx((0.5 + 1.0) / 2)


def test_unknown_label_and_length_mismatch_raise() -> None:
    with pytest.raises(LabelError, match="bored"):
        confusion_matrix(["bored"], ["happy"], LABELS)
    with pytest.raises(LabelError, match="2 labels"):
        confusion_matrix(["happy", "sad"], ["happy"], LABELS)


def test_by_position_bins() -> None:
    positions = [0, 1, 2, 10, 11, 25]
    gold = ["happy"] * 6
    pred = ["happy", "happy", "sad", "sad", "sad", "happy"]
    rows = by_position(positions, gold, pred, LABELS, position_bins(25, 10))
    assert [(r["from"], r["to"], r["n"]) for r in rows] == [(0, 10, 3), (10, 20, 2), (20, 30, 1)]
    assert [r["wa"] for r in rows] == pytest.approx([2 / 3, 0.0, 1.0])


def test_bootstrap_difference_detects_a_real_gap_and_not_a_null_one() -> None:
    groups, gold, good, bad = [], [], [], []
    for conv in range(40):
        g, p_good = random_labels(conv, 60, skew=0.3)
        _, p_bad = random_labels(conv + 1000, 60, skew=0.0)
        groups += [f"c{conv}"] * 60
        gold += g
        good += p_good
        bad += [p if i % 2 else gg for i, (p, gg) in enumerate(zip(p_bad, g, strict=True))]
    keys, cms_good = group_confusions(groups, gold, good, LABELS)
    _, cms_bad = group_confusions(groups, gold, bad, LABELS)
    assert len(keys) == 40 and cms_good.sum() == 2400
    diff = bootstrap_interval(cms_good, cms_bad, n_boot=500)
    assert diff["lo"] < diff["value"] < diff["hi"]
    expected = ua_from_confusion(cms_good.sum(0)) - ua_from_confusion(cms_bad.sum(0))
    assert diff["value"] == pytest.approx(expected)
    same = bootstrap_interval(cms_good, cms_good, n_boot=200)
    assert same == {"value": 0.0, "lo": 0.0, "hi": 0.0}
    single = bootstrap_interval(cms_good, n_boot=500, seed=3)
    assert single["lo"] <= single["value"] <= single["hi"]
    assert bootstrap_interval(cms_good, n_boot=500, seed=3) == single  # seeded


def test_bootstrap_interval_covers_a_known_gap() -> None:
    # a: always right; b: right on half the conversations -> UA gap near 0.5, never 0.
    groups = [f"c{i // 10}" for i in range(200)]
    gold = [LABELS[i % 4] for i in range(200)]
    b = [g if (i // 10) % 2 else "neutral" for i, g in enumerate(gold)]
    _, cms_a = group_confusions(groups, gold, gold, LABELS)
    _, cms_b = group_confusions(groups, gold, b, LABELS)
    diff = bootstrap_interval(cms_a, cms_b, n_boot=1000)
    assert 0.0 < diff["lo"] < diff["value"] < diff["hi"] < 1.0


def test_ece_by_hand_and_its_conversation_bootstrap():
    from dpm_worker.metrics import (
        calibration_bins,
        ece_from_bins,
        expected_calibration_error,
        group_calibration_bins,
    )

    # 0.95 sure and right 2 of 4 times (bin 9); 0.55 sure and right 1 of 2 (bin 5);
    # a confidence of exactly 1.0 falls in the last bin.
    probs = np.array([[0.95, 0.05]] * 4 + [[0.55, 0.45]] * 2 + [[1.0, 0.0]], dtype=np.float64)
    gold = [0, 0, 1, 1, 0, 1, 0]
    bins = calibration_bins(probs, gold)
    assert bins[9].tolist() == pytest.approx([5, 4.8, 3]) and bins[5].tolist() == [2, 1.1, 1]
    expected = (abs(3 - 4.8) + abs(1 - 1.1)) / 7
    assert expected_calibration_error(probs, gold) == pytest.approx(expected)
    assert expected_calibration_error(np.eye(3), [0, 1, 2]) == 0.0
    assert np.isnan(expected_calibration_error(np.zeros((0, 2)), []))
    groups = ["a", "a", "b", "b", "c", "c", "c"]
    per_group = group_calibration_bins(groups, probs, gold)
    assert per_group.shape == (3, 10, 3) and np.allclose(per_group.sum(axis=0), bins)
    assert ece_from_bins(per_group).shape == (3,)
    ci = bootstrap_interval(per_group, metric="ece", n_boot=500)
    assert ci["value"] == pytest.approx(expected) and ci["lo"] <= ci["value"] <= ci["hi"]
