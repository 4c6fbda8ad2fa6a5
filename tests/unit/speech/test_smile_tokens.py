"""The eGeMAPS front end (openSMILE): block features, the fitted codebook, speaker-relative
spectral codes, and reproducible, round-tripping codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpm_worker.audio import SAMPLE_RATE
from dpm_worker.errors import ConfigError
from dpm_worker.speech import (
    SpeechTokenizerConfig,
    fit_speech_tokenizer,
    load_speech_tokenizer,
    tokenize_utterances,
)
from dpm_worker.speech.features import BlockFeatures
from dpm_worker.speech.smile import SPECTRAL_DIM, egemaps_functionals, smile_block_features
from dpm_worker.speech.speaker_levels import ConversationLevels
from tests.unit.speech.test_speaker_levels import tone, utt

BLOCK = SAMPLE_RATE // 25

EGEMAPS = SpeechTokenizerConfig(
    n_spectral=4,
    n_energy=4,
    n_pitch=5,
    speaker_relative=True,
    speaker_reference="conversation",
    features="egemaps",
    spectral_relative=True,
)


def test_block_features_track_pitch_and_silence():
    wave = np.concatenate([tone(200, 0.3, 1.0), np.zeros(SAMPLE_RATE // 2, np.float32)])
    feats = smile_block_features(wave, SAMPLE_RATE, 25.0)
    n = wave.size // BLOCK
    assert feats.spectral.shape == (n, SPECTRAL_DIM) and feats.log_f0.shape == (n,)
    voiced = feats.log_f0[:20]
    assert torch.isfinite(voiced).float().mean() > 0.8
    # openSMILE's F0 of a 200 Hz tone, within a quarter semitone
    assert abs(float(np.nanmedian(voiced.numpy())) - np.log2(200)) < 0.25 / 12
    assert torch.isnan(feats.log_f0[-8:]).all()  # the silent tail is unvoiced
    assert (feats.log_energy[-8:] < -5).all()
    assert egemaps_functionals(wave, SAMPLE_RATE).shape == (88,)


@pytest.fixture(scope="module")
def fitted():
    waves, keys = [], []
    for i, (f0, amp, spk) in enumerate([(110, 0.1, "a"), (220, 0.5, "b"), (140, 0.1, "a"),
                                        (180, 0.5, "b"), (95, 0.2, "a"), (250, 0.3, "b")]):  # fmt: skip
        waves.append(tone(f0, amp, 0.8 + 0.1 * i))
        keys.append(("c", spk))
    return fit_speech_tokenizer(waves, EGEMAPS, seed=0, speakers=keys), waves, keys


def test_codebook_fits_reproduces_and_round_trips(fitted, tmp_path):
    tok, waves, keys = fitted
    assert tok.spectral_centroids.shape == (4, SPECTRAL_DIM)
    assert tok.spectral_norm is not None and (tok.spectral_norm[1] > 0).all()
    utterances = [utt("c", i, k[1], w) for i, (w, k) in enumerate(zip(waves, keys, strict=True))]
    first = [u.audio_ids for u in tokenize_utterances(utterances, tok)]
    again = [u.audio_ids for u in tokenize_utterances(utterances, tok)]
    for a, b, w in zip(first, again, waves, strict=True):
        assert a.dtype == np.int64 and len(a) == -(-w.size // BLOCK)
        assert a.min() >= 0 and a.max() < EGEMAPS.vocab_size
        np.testing.assert_array_equal(a, b)  # bitwise reproducible
    tok.save(tmp_path)
    loaded = load_speech_tokenizer(tmp_path)
    assert loaded.fingerprint == tok.fingerprint
    for a, b in zip(
        first, [u.audio_ids for u in tokenize_utterances(utterances, loaded)], strict=True
    ):
        np.testing.assert_array_equal(a, b)
    # the front end is part of the fingerprint (a token cache of mel codes is not reused)
    mel = fit_speech_tokenizer(waves, SpeechTokenizerConfig(n_spectral=4, n_energy=4, n_pitch=5))
    assert mel.fingerprint != tok.fingerprint and mel.spectral_norm is None


def test_spectral_codes_are_shifts_from_the_speakers_mean(fitted):
    tok, _, _ = fitted
    rng = np.random.default_rng(0)
    counts = [30, 40, 25]

    def feats(offset: float) -> BlockFeatures:
        # integer-valued features and offsets: every shift is exact in float32 and float64
        spectral = torch.from_numpy(rng.integers(-8, 8, (sum(counts), SPECTRAL_DIM))).float()
        return BlockFeatures(
            spectral=spectral + offset,
            log_energy=torch.full((sum(counts),), -2.0),
            log_f0=torch.full((sum(counts),), 7.0),
        )

    base = feats(0.0)
    shifted = BlockFeatures(base.spectral + 16.0, base.log_energy, base.log_f0)
    keys = [("c", "a")] * 3

    def codes(f: BlockFeatures) -> list[np.ndarray]:
        levels = ConversationLevels(spectral=True)
        levels.add_stacked(keys, f, counts)
        return tok.quantize(f, counts, levels=levels, speakers=keys)

    for a, b in zip(codes(base), codes(shifted), strict=True):
        np.testing.assert_array_equal(a, b)
    # without the spectral reference the same shift moves the codes
    absolute = SpeechTokenizerConfig(**{**EGEMAPS.__dict__, "spectral_relative": False})
    tok_abs = type(tok)(absolute, tok.spectral_centroids, tok.energy_centroids,
                        tok.pitch_centroids, spectral_norm=tok.spectral_norm)  # fmt: skip
    levels = ConversationLevels()
    levels.add_stacked(keys, base, counts)
    plain = tok_abs.quantize(base, counts, levels=levels, speakers=keys)
    moved = tok_abs.quantize(shifted, counts, levels=levels, speakers=keys)
    assert any((a != b).any() for a, b in zip(plain, moved, strict=True))


def test_config_checks():
    with pytest.raises(ConfigError, match="features must be one of"):
        SpeechTokenizerConfig(features="mfcc")
    with pytest.raises(ConfigError, match="spectral_relative needs speaker_relative"):
        SpeechTokenizerConfig(features="egemaps", spectral_relative=True)
