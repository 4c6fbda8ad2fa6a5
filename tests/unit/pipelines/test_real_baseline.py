"""``dpm bench real_baseline``: the eGeMAPS + logistic regression reference beside the model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dpm_worker.corpus import read_ravdess, write_manifest
from dpm_worker.utterance import Utterance
from pipelines.bench.references import fit_predict, speaker_z
from pipelines.cli import main
from tests.fixtures.corpus_trees import build_ravdess_tree


def test_speaker_z_normalises_each_speaker_on_its_own():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(5, 2, (6, 3)), rng.normal(-1, 0.5, (4, 3))])
    utts = [Utterance("c", i, "a" if i < 6 else "b", "") for i in range(10)]
    z = speaker_z(x, utts)
    for rows in (slice(0, 6), slice(6, 10)):
        np.testing.assert_allclose(z[rows].mean(axis=0), 0.0, atol=1e-12)
        np.testing.assert_allclose(z[rows].std(axis=0), 1.0, atol=1e-12)


def test_speaker_z_lets_the_regression_see_past_the_voice():
    """Speakers whose own offsets are larger than the emotions' shifts: raw features mislead,
    per-speaker z-scores separate the emotions (what the reference is for)."""
    rng = np.random.default_rng(1)
    labels = ["neutral", "happy", "sad", "angry"]
    shift = {e: rng.normal(0, 1, 20) for e in labels}

    def speakers(names):
        rows, utts = [], []
        for name in names:
            offset = rng.normal(0, 6, 20)
            for i in range(40):
                emotion = labels[i % 4]
                rows.append(offset + shift[emotion] + rng.normal(0, 0.3, 20))
                utts.append(Utterance(name, i, name, "", emotion=emotion))
        return np.stack(rows), utts

    x, u = speakers([f"train{i}" for i in range(6)])
    xt, ut = speakers(["test0", "test1"])
    gold = [str(v.emotion) for v in u]
    truth = [str(v.emotion) for v in ut]

    def accuracy(pred):
        return np.mean([p == t for p, t in zip(pred, truth, strict=True)])

    raw = accuracy(fit_predict(x, gold, xt, 0.5))
    z = accuracy(fit_predict(speaker_z(x, u), gold, speaker_z(xt, ut), 0.5))
    assert z > 0.95 and raw < 0.8


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    base = tmp_path_factory.mktemp("rb")
    root = build_ravdess_tree(base, actors=(1, 2, 19))
    train, _ = read_ravdess(str(root), actors=[1, 2])
    test, _ = read_ravdess(str(root), actors=[19], order="inertia")
    write_manifest(train, str(base / "train.parquet"))
    write_manifest(test, str(base / "test.parquet"))
    return base / "train.parquet", base / "test.parquet"


def run_bench(manifests, out, *options: str) -> dict:
    """``dpm bench real_baseline`` on the fixture manifests; its JSON report."""
    train, test = manifests
    args = ["bench", "real_baseline", "--train", str(train), "--test", str(test), *options]
    assert main([*args, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_baseline_and_model_side_by_side(manifests, tmp_path):
    report = run_bench(
        manifests, tmp_path / "rb.json", "--mode", "utterance", "--slots", "2", "--bootstrap", "50"
    )
    assert report["n_train"] == 72 and report["n_test"] == 36
    scores = report["scores"]
    assert set(scores) == {"baseline_raw", "baseline_speaker_z", "utterance"}
    for block in scores.values():
        assert block["n"] == 36 and sum(map(sum, block["confusion"])) == 36
        lo, hi = block["ua_ci"]
        assert lo <= block["ua"] <= hi
    diff = report["model_minus_baseline"]["utterance-baseline_raw"]
    assert diff["ua_diff"] == pytest.approx(
        scores["utterance"]["ua"] - scores["baseline_raw"]["ua"]
    )


def test_code_histogram_counts_each_factor_of_the_product_code():
    from dpm_worker.speech.tokenizer_config import SpeechTokenizerConfig
    from pipelines.bench.real_baseline import code_histogram

    config = SpeechTokenizerConfig(n_spectral=3, n_energy=2, n_pitch=4)
    # (spectral, energy, pitch) -> (s * E + e) * P + p
    triples = [(0, 1, 3), (2, 0, 0), (2, 1, 1), (2, 1, 1)]
    codes = np.array([(s * 2 + e) * 4 + p for s, e, p in triples])
    hist = code_histogram(codes, config)
    assert hist.shape == (3 + 2 + 4,)
    np.testing.assert_allclose(hist[:3], [0.25, 0.0, 0.75])
    np.testing.assert_allclose(hist[3:5], [0.25, 0.75])
    np.testing.assert_allclose(hist[5:], [0.25, 0.5, 0.0, 0.25])


def test_baseline_on_the_models_own_codes(manifests, tmp_path):
    """``--features codes``: the regression reads the histogram of the packaged model's codes
    of the same utterances the model reads (no model mode: ``--mode none``)."""
    from dpm_worker.model import load_model

    report = run_bench(
        manifests, tmp_path / "codes.json", "--features", "codes", "--mode", "none",
        "--bootstrap", "20",
    )  # fmt: skip
    assert report["features"] == "codes" and report["n_train"] == 72 and report["n_test"] == 36
    assert set(report["scores"]) == {"baseline_raw", "baseline_speaker_z"}
    assert report["model"] == load_model(None).model_id


def test_the_encoder_probe_is_a_reference_too(manifests, tmp_path):
    report = run_bench(
        manifests, tmp_path / "enc.json", "--features", "encoder", "--mode", "none",
        "--bootstrap", "20",
    )  # fmt: skip
    assert report["features"] == "encoder" and report["n_test"] == 36
    assert set(report["scores"]) == {"baseline_raw", "baseline_speaker_z"}


def test_corpus_groups_weigh_alike_however_many_takes_they_hold():
    """Replicating one corpus's rows three times leaves a group-weighted fit unchanged."""
    rng = np.random.default_rng(2)
    labels = np.array(["neutral", "happy", "sad", "angry"])
    a, b = rng.normal(0, 1, (40, 5)), rng.normal(0.5, 1, (40, 5))
    ya, yb = list(labels[np.arange(40) % 4]), list(labels[(np.arange(40) + 1) % 4])
    test = rng.normal(0, 1, (30, 5))
    once = fit_predict(np.concatenate([a, b]), ya + yb, test, 0.5, ["a"] * 40 + ["b"] * 40)
    thrice = fit_predict(
        np.concatenate([a, a, a, b]), ya * 3 + yb, test, 0.5, ["a"] * 120 + ["b"] * 40
    )
    assert once == thrice
