"""The encoder tokenizer: units at 25 Hz, speaker-relative summaries, fit/save/load, digests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from dpm_worker.errors import ConfigError
from dpm_worker.speech import (
    EncoderTokenizerConfig,
    fit_encoder_tokenizer,
    load_speech_tokenizer,
    tokenize_utterances,
)
from dpm_worker.speech.encoder_tokenizer import SummaryLevels
from dpm_worker.utterance import Utterance

AMI = Path(__file__).parents[2] / "fixtures" / "real_speech"


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    """Eight 1.5-2.5 s pieces of two real meetings (two 'speakers': one per recording)."""
    out = []
    for name in ("dev00.flac", "tst00.flac"):
        audio, rate = sf.read(AMI / name, dtype="float32", always_2d=True)
        wave = soxr.resample(audio.mean(axis=1), rate, 16_000).astype(np.float32)
        for i in range(4):
            start = 16_000 * (2 * i + 1)
            out.append(wave[start : start + 24_000 + 4_000 * i])
    return out


@pytest.fixture(scope="module")
def tokenizer(waves):
    config = EncoderTokenizerConfig(n_units=8, device="cpu")
    return fit_encoder_tokenizer(waves, config, speakers=["a"] * 4 + ["b"] * 4, seed=0)


def _utterances(waves: list[np.ndarray]) -> list[Utterance]:
    return [Utterance("conv", i, "a" if i < 4 else "b", samples=w) for i, w in enumerate(waves)]


def test_units_come_at_25_hz_within_the_fitted_vocabulary(tokenizer, waves):
    units = tokenizer.encode_batch(waves)
    for wave, codes in zip(waves, units, strict=True):
        states = (len(wave) // 160 - len(wave) // 160 % 2) // 2  # even mel frames, halved
        assert len(codes) == (states + 1) // 2  # pairs; an odd last state stands alone
        assert codes.dtype == np.int64 and 0 <= codes.min() and codes.max() < 8
    assert len(np.unique(np.concatenate(units))) > 1


def test_tokenizing_twice_gives_the_same_units_and_summaries(tokenizer, waves):
    tokenizer.summaries = True
    try:
        first = list(tokenize_utterances(_utterances(waves), tokenizer))
        second = list(tokenize_utterances(_utterances(waves), tokenizer))
    finally:
        tokenizer.summaries = False
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.audio_ids, b.audio_ids)
        np.testing.assert_array_equal(a.acoustic, b.acoustic)
        assert a.acoustic.shape == (2 * 512 + 90,) and a.samples is None


def test_summaries_are_relative_to_each_speaker(tokenizer, waves):
    """Without shrinkage a speaker's standardised summaries have mean 0 and spread 1."""
    feats, counts = tokenizer.block_features(waves)
    levels = SummaryLevels(*tokenizer.summary_norm.numpy(), prior_count=0.0)
    speakers = ["a"] * 4 + ["b"] * 4
    levels.add_stacked(speakers, feats, counts)
    table = np.stack(
        [levels.standardise(k, s) for k, s in zip(speakers, feats.summaries, strict=True)]
    )
    for rows in (slice(0, 4), slice(4, 8)):
        np.testing.assert_allclose(table[rows].mean(axis=0), 0.0, atol=1e-9)
        spread = table[rows].std(axis=0)
        assert np.allclose(spread[spread > 0.5], 1.0, atol=1e-6)


def test_shrinkage_reads_a_lone_turn_against_the_corpus():
    mean, var = np.array([1.0, -2.0]), np.array([4.0, 0.25])
    x = np.array([3.0, -1.0])
    for k, expected in ((1e9, (x - mean) / np.sqrt(var)), (0.0, np.zeros(2))):
        levels = SummaryLevels(mean, var, prior_count=k)
        levels.add_stacked(["s"], type("F", (), {"summaries": [x]})(), [1])
        np.testing.assert_allclose(levels.standardise("s", x), expected, atol=1e-6)
    # one turn and two pseudo turns: the mean moves a third of the way to the turn
    levels = SummaryLevels(mean, var, prior_count=2.0)
    levels.add_stacked(["s"], type("F", (), {"summaries": [x]})(), [1])
    shifted = mean + (x - mean) / 3
    second = (x * x + 2 * (var + mean**2)) / 3
    np.testing.assert_allclose(
        levels.standardise("s", x), (x - shifted) / np.sqrt(second - shifted**2)
    )


def test_saved_tokenizer_loads_with_the_same_fingerprint_and_units(tokenizer, waves, tmp_path):
    tokenizer.save(tmp_path)
    loaded = load_speech_tokenizer(tmp_path)
    assert loaded.fingerprint == tokenizer.fingerprint
    assert loaded.vocab_size == 8 and loaded.rate_hz == 25.0
    for a, b in zip(loaded.encode_batch(waves[:2]), tokenizer.encode_batch(waves[:2]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fingerprint_ignores_where_it_runs_but_not_what_it_codes(tokenizer):
    import dataclasses

    from dpm_worker.speech import EncoderTokenizer

    moved = EncoderTokenizer(
        dataclasses.replace(tokenizer.config, threads=2, device="auto"),
        tokenizer.centroids, tokenizer.frame_norm, tokenizer.summary_norm,
    )  # fmt: skip
    assert moved.fingerprint == tokenizer.fingerprint
    other = EncoderTokenizer(
        tokenizer.config, tokenizer.centroids + 1e-3, tokenizer.frame_norm, tokenizer.summary_norm
    )
    assert other.fingerprint != tokenizer.fingerprint


@pytest.mark.parametrize(
    "field, value",
    [("n_units", 1), ("encoder", "whisper-huge"), ("prior_count", -1.0), ("device", "tpu")],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"tokenizer.{field}"):
        EncoderTokenizerConfig(**{field: value})


def test_a_pickled_tokenizer_builds_its_own_encoder(tokenizer, waves):
    import pickle

    copy = pickle.loads(pickle.dumps(tokenizer))
    assert copy._encoder is None and copy.fingerprint == tokenizer.fingerprint
    np.testing.assert_array_equal(copy.encode(waves[0]), tokenizer.encode(waves[0]))


@pytest.mark.parametrize("layers", [(7,), (2, 2), (0,)])
def test_summary_layers_must_be_distinct_pinned_blocks(layers):
    with pytest.raises(ConfigError, match="tokenizer.summary_layers"):
        EncoderTokenizerConfig(summary_layers=layers)


def test_a_summary_refitted_on_block_two_keeps_the_units(tokenizer, waves, tmp_path):
    from dpm_worker.speech import refit_summary

    speakers = ["a"] * 4 + ["b"] * 4
    refitted = refit_summary(tokenizer, waves, speakers, [2])
    assert refitted.config.summary_layers == (2,)
    assert refitted.fingerprint != tokenizer.fingerprint
    for a, b in zip(refitted.encode_batch(waves), tokenizer.encode_batch(waves), strict=True):
        np.testing.assert_array_equal(a, b)  # the backbone reads the same tokens
    old, _ = tokenizer.block_features(waves[:1])
    new, _ = refitted.block_features(waves[:1])
    assert new.summaries[0].shape == old.summaries[0].shape
    np.testing.assert_array_equal(new.summaries[0][-90:], old.summaries[0][-90:])  # prosody
    assert not np.allclose(new.summaries[0][:1024], old.summaries[0][:1024])
    refitted.save(tmp_path)
    loaded = load_speech_tokenizer(tmp_path)
    assert loaded.config.summary_layers == (2,) and loaded.fingerprint == refitted.fingerprint
    feats, _ = loaded.block_features(waves[:1])
    np.testing.assert_allclose(feats.summaries[0], new.summaries[0], rtol=1e-6)
