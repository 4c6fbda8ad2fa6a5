"""The acoustic head: fitted, fused into every mode's rows, saved and loaded with the model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dpm_worker.errors import ConfigError, ModelError
from dpm_worker.memory import LabelingConfig, SlotLabeler, label_batched
from dpm_worker.model import (
    AcousticHead,
    EmotionModel,
    fit_acoustic_head,
    load_acoustic_head,
    load_model,
    save_model,
)
from dpm_worker.model.acoustic_head import HEAD_CONFIG, HEAD_WEIGHTS
from dpm_worker.utterance import Utterance

LABELS = ("neutral", "happy", "sad", "angry")
MODES = ("utterance", "window", "prior-ema", "dpm")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n=200, dim=5, seed=0):
    """Classes 8 noise deviations apart along the first dimension (a Bayes error near 1e-4);
    every dimension on a large offset (the standardisation must remove it)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.normal(0, 1, (n, dim)) + 100.0
    x[:, 0] += 8.0 * y
    return x, [LABELS[i] for i in y]


def test_fit_reads_the_classes_and_log_probs_are_normalised():
    x, y = _data()
    head = fit_acoustic_head(x, y, LABELS)
    xt, yt = _data(seed=1)
    logp = head.log_probs(xt)
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, rtol=1e-12)
    accuracy = np.mean([LABELS[i] == g for i, g in zip(logp.argmax(1), yt, strict=True)])
    assert accuracy > 0.95


def test_bad_input_is_refused():
    x, y = _data()
    with pytest.raises(ConfigError, match="not among"):
        fit_acoustic_head(x, [*y[:-1], "bored"], LABELS)
    with pytest.raises(ConfigError, match="no training example"):
        fit_acoustic_head(x, ["happy"] * len(y), LABELS)
    head = fit_acoustic_head(x, y, LABELS)
    with pytest.raises(ConfigError, match="5"):
        head.log_probs(np.zeros((1, 4)))
    with pytest.raises(ConfigError, match="weight"):
        dataclasses.replace(head, weight=-1.0)


def _conversation(model, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Utterance("c", i, "ab"[i % 2], audio_ids=rng.integers(0, model.vocab.n_audio, 12),
                  acoustic=rng.normal(0, 1, 3))
        for i in range(n)
    ]  # fmt: skip


def _fused(probs: np.ndarray, head: AcousticHead, summary: np.ndarray) -> np.ndarray:
    """The reference fusion: ``probs × p_head ** weight``, renormalised, in float64."""
    logp = np.log(np.asarray(probs, dtype=np.float64)) + head.weight * head.log_probs(summary)[0]
    p = np.exp(logp - logp.max())
    return p / p.sum()


def test_reads_are_fused_with_the_head_and_the_memory_learns_them():
    model = EmotionModel.random(seed=0)
    x, y = _data(dim=3)
    head = fit_acoustic_head(x - 100.0, y, model.labels, weight=0.7)
    conv = _conversation(model)
    plain = {m: label_batched(model, LabelingConfig(mode=m), [conv], 1)[0] for m in MODES}
    model.attach_head(head)
    fused = {m: label_batched(model, LabelingConfig(mode=m), [conv], 1)[0] for m in MODES}
    # reads without memory: the bare read times the head
    for mode in ("utterance", "window"):
        for a, b, utt in zip(plain[mode], fused[mode], conv, strict=True):
            np.testing.assert_allclose(b.probs, _fused(a.probs, head, utt.acoustic), atol=1e-5)
            assert b.emotion == model.labels[int(np.argmax(b.probs))]
    # prior-ema averages the fused window reads (rows.ema_read's recursion, by hand)
    average: dict[str, np.ndarray] = {}
    for read, row in zip(fused["window"], fused["prior-ema"], strict=True):
        r = read.probs.astype(np.float64)
        speaker = row.utterance.speaker
        if speaker not in average:
            expected = r
            average[speaker] = r
        else:  # the read times the average of the earlier reads, which then takes it in
            expected = r * average[speaker]
            average[speaker] = 0.3 * average[speaker] + 0.7 * r
        np.testing.assert_allclose(row.probs, expected / expected.sum(), atol=1e-5)
    # dpm (prior memory): what each write trains the speaker's prior toward is the fused read
    labeler = SlotLabeler(model, LabelingConfig(mode="dpm"), 1)
    labeler.admit("c", conv)
    for n in range(len(conv)):
        labeler.advance()
        np.testing.assert_allclose(
            labeler.step.written.numpy()[0], fused["window"][n].probs, atol=1e-5
        )
    labeler.close()
    # so the rows differ from fusing the bare memory's rows
    later = [
        np.abs(b.probs - _fused(a.probs, head, u.acoustic)).max()
        for a, b, u in zip(plain["dpm"], fused["dpm"], conv, strict=True)
    ]
    assert max(later) > 1e-3
    bare = [dataclasses.replace(u, acoustic=None) for u in conv]
    with pytest.raises(ConfigError, match="acoustic summaries"):
        label_batched(model, LabelingConfig(mode="dpm"), [bare], 1)


def test_the_head_travels_with_the_model_folder(tmp_path):
    model = EmotionModel.random(seed=1)
    x, y = _data(dim=3)
    model.attach_head(fit_acoustic_head(x, y, model.labels, weight=1.5, info={"c": 0.5}))
    assert model.speech_tokenizer.summaries
    save_model(model, str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.acoustic_head is not None and loaded.speech_tokenizer.summaries
    head = model.acoustic_head
    for name in ("mean", "scale", "coef", "intercept"):
        np.testing.assert_array_equal(getattr(loaded.acoustic_head, name), getattr(head, name))
    assert loaded.acoustic_head.weight == 1.5 and loaded.acoustic_head.info == {"c": 0.5}
    bare = EmotionModel.random(seed=1)
    save_model(bare, str(tmp_path / "bare"))
    assert load_acoustic_head(tmp_path / "bare") is None
    assert load_model(str(tmp_path / "bare")).fingerprint != loaded.fingerprint
    (tmp_path / "m" / HEAD_WEIGHTS).unlink()
    with pytest.raises(ModelError):
        load_acoustic_head(tmp_path / "m")
    (tmp_path / "m" / HEAD_CONFIG).unlink()
    assert load_acoustic_head(tmp_path / "m") is None


def test_a_head_with_other_labels_is_refused():
    model = EmotionModel.random(seed=0)
    x, y = _data(dim=3)
    head = fit_acoustic_head(x, y, LABELS)
    other = AcousticHead(
        labels=("a", "b", "c", "d"), mean=head.mean, scale=head.scale, coef=head.coef,
        intercept=head.intercept, weight=1.0,
    )  # fmt: skip
    with pytest.raises(ModelError, match="labels"):
        model.attach_head(other)


def test_rows_at_weight_zero_change_nothing():
    x, y = _data()
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 50, (20, x.shape[1]))
    noisy_y = [LABELS[i % 4] for i in range(20)]
    alone = fit_acoustic_head(x, y, LABELS)
    weights = np.concatenate([np.ones(len(y)), np.zeros(20)])
    with_zero = fit_acoustic_head(
        np.concatenate([x, noise]), [*y, *noisy_y], LABELS, sample_weight=weights
    )
    for name in ("mean", "scale"):
        np.testing.assert_allclose(getattr(with_zero, name), getattr(alone, name), rtol=1e-9)
    # the same strictly convex problem: the same optimum, up to the solver's tolerance
    for name in ("coef", "intercept"):
        np.testing.assert_allclose(
            getattr(with_zero, name), getattr(alone, name), rtol=1e-2, atol=1e-2
        )
    with pytest.raises(ConfigError, match="sample weights"):
        fit_acoustic_head(x, y, LABELS, sample_weight=-np.ones(len(y)))
