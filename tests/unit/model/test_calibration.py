"""A model's temperature: the rule, its fit, its file, and the labeler applying it in one place."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from dpm_worker.errors import ConfigError, ModelError
from dpm_worker.memory import LabelingConfig, SlotLabeler, label_batched
from dpm_worker.metrics import expected_calibration_error
from dpm_worker.model import (
    CALIBRATION_FILE,
    Calibration,
    EmotionModel,
    apply_temperature,
    fit_temperature,
    load_calibration,
    load_model,
    save_calibrated,
    save_model,
)
from tests.unit.memory.test_batched import conversations, make_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_temperature_rule_keeps_the_order_and_the_zeros():
    p = np.array([[0.7, 0.2, 0.1, 0.0], [0.25, 0.25, 0.4, 0.1]], dtype=np.float32)
    for t in (0.3, 1.0, 4.0):
        q = apply_temperature(p, t)
        assert q.dtype == np.float32 and np.allclose(q.sum(axis=1), 1.0, atol=1e-6)
        assert (q.argmax(axis=1) == p.argmax(axis=1)).all() and q[0, 3] == 0
        # p ** (1/T), renormalized, in float64 arithmetic
        ref = p.astype(np.float64) ** (1 / t)
        np.testing.assert_allclose(q, ref / ref.sum(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-7)
    assert apply_temperature(p, 4.0)[0, 0] < 0.7 < apply_temperature(p, 0.5)[0, 0]


def test_fit_recovers_the_temperature_that_made_an_overconfident_model():
    """Gold labels drawn from softmax(z); the model emits softmax(z * 3): T = 3 undoes it."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, size=(4000, 4))
    true = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    gold = np.array([rng.choice(4, p=row) for row in true])
    emitted = np.exp(3 * z) / np.exp(3 * z).sum(axis=1, keepdims=True)
    t = fit_temperature(emitted, gold)
    assert t == pytest.approx(3.0, rel=0.08)
    before = expected_calibration_error(emitted, gold)
    after = expected_calibration_error(apply_temperature(emitted, t), gold)
    assert after < 0.03 < before
    with pytest.raises(ConfigError):
        fit_temperature(emitted[:0], gold[:0])


def test_calibration_file_round_trip_and_bad_files(tmp_path):
    cal = Calibration(2.5, mode="dpm", fitted_on="val.parquet", ece_before=0.2, ece_after=0.05,
                      info={"n": 108})  # fmt: skip
    cal.save(tmp_path)
    assert load_calibration(tmp_path) == cal
    assert json.loads((tmp_path / CALIBRATION_FILE).read_text())["temperature"] == 2.5
    assert load_calibration(tmp_path / "nowhere") is None
    for bad in ('{"temperature": 0}', '{"temperature": "hot"}', "{}", "not json"):
        (tmp_path / CALIBRATION_FILE).write_text(bad)
        with pytest.raises(ModelError, match=CALIBRATION_FILE):
            load_calibration(tmp_path)
    for t in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError):
            Calibration(t)


@pytest.mark.parametrize("mode", ["utterance", "window", "full", "dpm", "prior-ema"])
@pytest.mark.parametrize("slots", [1, 3])
def test_the_labeler_applies_the_temperature_to_every_mode_and_keeps_the_labels(mode, slots):
    config = LabelingConfig(mode=mode, window_tokens=48)
    convs = conversations(4, seed=3)
    plain = label_batched(make_model(), config, convs, slots)
    model = make_model()
    model.calibration = Calibration(3.0)
    hot = label_batched(model, config, convs, slots)
    for rows, ref in zip(hot, plain, strict=True):
        probs, base = np.stack([r.probs for r in rows]), np.stack([r.probs for r in ref])
        np.testing.assert_allclose(probs, apply_temperature(base, 3.0), atol=1e-6)
        assert [r.emotion for r in rows] == [r.emotion for r in ref]
        assert [r.confidence for r in rows] == pytest.approx(probs.max(axis=1).tolist())
        assert max(r.confidence for r in rows) < max(r.confidence for r in ref)


def test_save_calibrated_copies_the_folder_and_changes_only_the_confidence(tmp_path):
    save_model(EmotionModel.random(seed=0), str(tmp_path / "m"))
    source = load_model(str(tmp_path / "m"))
    assert source.calibration is None  # a folder without the file: uncalibrated, as before
    save_calibrated(str(tmp_path / "m"), Calibration(2.0, mode="dpm"), str(tmp_path / "c"),
                    model_id="tiny+cal")  # fmt: skip
    copy = load_model(str(tmp_path / "c"))
    assert copy.calibration == Calibration(2.0, mode="dpm") and copy.model_id == "tiny+cal"
    assert copy.fingerprint != source.fingerprint  # the manifest covers calibration.json
    for name in ("model.safetensors", "speech_tokenizer.safetensors", "config.json"):
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "m" / name).read_bytes()
    # calibrating a calibrated folder replaces its temperature
    save_calibrated(str(tmp_path / "c"), Calibration(0.5), str(tmp_path / "d"))
    assert load_model(str(tmp_path / "d")).calibration == Calibration(0.5)
    config = dataclasses.replace(LabelingConfig(), mode="window", window_tokens=48)
    convs = conversations(2, seed=1)
    base = label_batched(source, config, convs, 2)
    hot = label_batched(copy, config, convs, 2)
    for rows, ref in zip(hot, base, strict=True):
        expect = apply_temperature(np.stack([r.probs for r in ref]), 2.0)
        np.testing.assert_allclose(np.stack([r.probs for r in rows]), expect, atol=1e-6)


def test_a_resumed_conversation_is_calibrated_once():
    """Rows restored from a checkpoint were emitted calibrated already: they come back as
    they were, and the rows labeled after the resume get the temperature once."""
    from tests.unit.memory.test_slots import CONFIGS, run_slots

    def hot_model() -> EmotionModel:
        model = make_model()
        model.calibration = Calibration(3.0)
        return model

    config = CONFIGS["prior"]
    convs = [c + c for c in conversations(2, seed=8)]
    reference = label_batched(hot_model(), config, convs, 2)
    first = SlotLabeler(hot_model(), config, 2)
    run_slots(first, convs, stop_after=4)
    states = {k: first.export_state(k) for k in first.keys}
    assert all(0 < s.position < len(convs[k]) for k, s in states.items())
    done = run_slots(SlotLabeler(hot_model(), config, 2), convs, states)
    for n, rows in enumerate(reference):
        got, want = np.stack([r.probs for r in done[n]]), np.stack([r.probs for r in rows])
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert [r.emotion for r in done[n]] == [r.emotion for r in rows]
