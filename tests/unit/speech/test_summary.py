"""An utterance's acoustic summary: pooled statistics of the block features the codes quantize."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpm_worker.speech import BuiltinSpeechTokenizer, SpeechTokenizerConfig, tokenize_utterances
from dpm_worker.speech.features import BlockFeatures
from dpm_worker.speech.summary import SCALAR_NAMES, summary_names, utterance_summary
from dpm_worker.utterance import Utterance

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _feats(energy, f0, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    n = len(energy)
    return BlockFeatures(
        spectral=torch.tensor(rng.normal(size=(n, dim)), dtype=torch.float32),
        log_energy=torch.tensor(energy, dtype=torch.float32),
        log_f0=torch.tensor(f0, dtype=torch.float32),
    )


def test_statistics_are_over_the_active_blocks():
    nan = float("nan")
    # two silent blocks (more than 3 decades below the loudest) must not count
    feats = _feats([-2.0, -2.5, -9.0, -1.0, -9.5], [7.0, 7.5, nan, nan, 8.0])
    out = dict(zip(summary_names(3), utterance_summary(feats), strict=True))
    loud = np.array([-2.0, -2.5, -1.0])
    assert out["energy_mean"] == pytest.approx(loud.mean())
    assert out["energy_std"] == pytest.approx(loud.std())
    assert out["active_share"] == pytest.approx(3 / 5)
    assert out["voiced_share"] == pytest.approx(2 / 3)  # 7.0, 7.5 voiced among the active
    assert out["f0_mean"] == pytest.approx(7.25)
    assert out["f0_delta"] == pytest.approx(0.5)
    spectral = feats.spectral.numpy().astype(np.float64)[[0, 1, 3]]
    np.testing.assert_allclose(
        [out[f"spectral_mean_{i}"] for i in range(3)], spectral.mean(0), rtol=1e-12
    )


def test_no_voiced_block_gives_zero_pitch_statistics_and_names_match():
    feats = _feats([-2.0, -2.0, -3.0], [float("nan")] * 3)
    summary = utterance_summary(feats)
    assert len(summary) == len(summary_names(3)) == 2 * 3 + len(SCALAR_NAMES)
    out = dict(zip(summary_names(3), summary, strict=True))
    assert [out[k] for k in ("voiced_share", "f0_mean", "f0_std", "f0_range", "f0_delta")] == [
        0
    ] * 5
    assert np.isfinite(summary).all()


@pytest.mark.parametrize("reference", ["running", "conversation", None])
def test_summaries_do_not_change_the_codes(reference):
    """Tokenizing with summaries on gives the same codes, and each utterance its summary of
    the speaker-relative features (a louder take sits above the speaker's reference)."""
    config = SpeechTokenizerConfig(
        n_spectral=4,
        speaker_relative=reference is not None,
        speaker_reference=reference or "running",
    )
    tokenizer = BuiltinSpeechTokenizer.random(config, seed=3)
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    utts = [
        Utterance("c", i, "ab"[i % 2], samples=(gain * np.sin(2 * np.pi * f0 * t)
                  + 0.01 * rng.standard_normal(t.size)).astype(np.float32))
        for i, (gain, f0) in enumerate([(0.1, 120), (0.1, 200), (0.4, 150), (0.1, 210)])
    ]  # fmt: skip
    plain = list(tokenize_utterances(utts, tokenizer))
    tokenizer.summaries = True
    summarized = list(tokenize_utterances(utts, tokenizer))
    for a, b in zip(plain, summarized, strict=True):
        np.testing.assert_array_equal(a.codes(), b.codes())
        assert a.acoustic is None and b.acoustic is not None
    names = summary_names(config.spectral_dim)
    energy = [dict(zip(names, u.acoustic, strict=True))["energy_mean"] for u in summarized]
    # speaker a: takes 0 (quiet) and 2 (4x the amplitude, log10(16) louder). Absolute and
    # conversation references keep that gap; a running reference is take 0 itself for take 0
    # and the mean of both for take 2, which halves it.
    gap = np.log10(16) / (2 if reference == "running" else 1)
    assert energy[2] - energy[0] == pytest.approx(gap, abs=0.1)
    if reference == "conversation":  # the speaker's mean is the reference: shifts sum to ~0
        assert energy[0] + energy[2] == pytest.approx(0.0, abs=0.1)
