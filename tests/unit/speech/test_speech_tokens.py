import numpy as np
import pytest
import torch

from dpm_worker.errors import ConfigError, ModelError
from dpm_worker.speech import (
    BuiltinSpeechTokenizer,
    SpeechTokenizer,
    SpeechTokenizerConfig,
    compute_block_features,
    fit_speech_tokenizer,
    load_speech_tokenizer,
)

SR = 16000


def voiced(f0: float, seconds: float, amplitude: float, seed: int = 0) -> np.ndarray:
    """A harmonic tone with a little noise: a crude vowel at pitch f0."""
    t = np.arange(int(seconds * SR)) / SR
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (amplitude * wave / 2 + noise * amplitude).astype(np.float32)


@pytest.fixture(scope="module")
def fitted() -> BuiltinSpeechTokenizer:
    waves = [
        voiced(f0, 1.0, amp, seed=i)
        for i, (f0, amp) in enumerate(
            [(f, a) for f in (90, 120, 160, 220, 300) for a in (0.02, 0.1, 0.5)]
        )
    ]
    waves.append(np.zeros(SR, dtype=np.float32))
    return fit_speech_tokenizer(
        waves, SpeechTokenizerConfig(n_spectral=2, n_energy=4, n_pitch=8), seed=0
    )


def test_rate_shape_and_range():
    tok = BuiltinSpeechTokenizer.random()
    assert isinstance(tok, SpeechTokenizer)
    codes = tok.encode(voiced(150, 2.0, 0.1))
    assert codes.dtype == np.int64 and codes.shape == (50,)
    assert codes.min() >= 0 and codes.max() < tok.vocab_size == 512
    assert tok.encode(np.zeros(100, dtype=np.float32)).shape == (1,)


def test_pitch_estimate_tracks_f0():
    for f0 in (100.0, 180.0, 260.0):
        feats = compute_block_features(torch.from_numpy(voiced(f0, 1.0, 0.2)))
        estimate = 2 ** np.nanmedian(feats.log_f0.numpy())
        assert abs(estimate - f0) / f0 < 0.05, (f0, estimate)
    silent = compute_block_features(torch.zeros(SR))
    assert np.isnan(silent.log_f0.numpy()).all()


def test_prosody_survives_quantization(fitted):
    cfg = fitted.config

    def digits(wave):
        codes = fitted.encode(wave)[2:-2]
        energy = (codes // cfg.n_pitch) % cfg.n_energy
        return np.median(energy), np.median(codes % cfg.n_pitch)

    quiet_low, loud_low, loud_high = (
        digits(voiced(100, 1, 0.02)),
        digits(voiced(100, 1, 0.5)),
        digits(voiced(250, 1, 0.5)),
    )
    assert loud_low[0] > quiet_low[0]  # louder -> higher energy level
    assert loud_high[1] > loud_low[1] > 0  # higher pitch -> higher voiced pitch level
    assert digits(np.zeros(SR, dtype=np.float32))[1] == 0  # silence is unvoiced


def _codes_one_wave(tok: BuiltinSpeechTokenizer, wave: np.ndarray) -> np.ndarray:
    """The codes of one wave computed from its own features (encode before batching)."""
    cfg = tok.config
    feats = compute_block_features(torch.from_numpy(wave), n_mels=cfg.n_mels)
    spectral = torch.cdist(feats.spectral, tok.spectral_centroids).argmin(dim=1)
    energy = (feats.log_energy[:, None] - tok.energy_centroids[None]).abs().argmin(dim=1)
    f0 = torch.nan_to_num(feats.log_f0)
    pitch = (f0[:, None] - tok.pitch_centroids[None]).abs().argmin(dim=1) + 1
    pitch = torch.where(torch.isnan(feats.log_f0), 0, pitch)
    return ((spectral * cfg.n_energy + energy) * cfg.n_pitch + pitch).numpy()


def test_batch_encoding_equals_one_by_one(fitted):
    rng = np.random.default_rng(5)
    # Empty, shorter than a block, exact blocks, ragged ends, and either side of 25 blocks
    # (where torch.cdist switches from direct distances to a matmul).
    lengths = [0, 100, 640, 641, 25 * 640, 26 * 640 + 3, 16000, 40000, 3 * 16000 + 17]
    waves = [
        voiced(float(rng.uniform(90, 300)), n / SR, 0.2, seed=i)[:n] for i, n in enumerate(lengths)
    ]
    waves[0] = np.zeros(0, dtype=np.float32)
    batch = fitted.encode_batch(waves)
    assert [len(c) for c in batch] == [max(1, -(-n // 640)) for n in lengths]
    for wave, codes in zip(waves, batch, strict=True):
        assert codes.dtype == np.int64
        np.testing.assert_array_equal(codes, _codes_one_wave(fitted, wave))
        np.testing.assert_array_equal(codes, fitted.encode(wave))
    assert fitted.encode_batch([]) == []


def test_fit_is_deterministic(fitted):
    waves = [voiced(f0, 1.0, 0.1) for f0 in (90, 150, 200, 300)] * 3
    cfg = SpeechTokenizerConfig(n_spectral=2, n_energy=2, n_pitch=4)
    a = fit_speech_tokenizer(waves, cfg, seed=3)
    b = fit_speech_tokenizer(waves, cfg, seed=3)
    assert a.fingerprint == b.fingerprint


def test_save_load_roundtrip(tmp_path, fitted):
    fitted.save(tmp_path)
    loaded = load_speech_tokenizer(tmp_path)
    wave = voiced(140, 1.5, 0.3)
    np.testing.assert_array_equal(loaded.encode(wave), fitted.encode(wave))
    assert loaded.fingerprint == fitted.fingerprint
    (tmp_path / "speech_tokenizer.safetensors").unlink()
    with pytest.raises(ModelError, match="weights"):
        load_speech_tokenizer(tmp_path)


def test_bad_config_and_input():
    with pytest.raises(ConfigError, match="n_pitch"):
        SpeechTokenizerConfig(n_pitch=1)
    with pytest.raises(ConfigError, match="rate_hz"):
        SpeechTokenizerConfig(rate_hz=33.0)
    with pytest.raises(ConfigError, match="mono"):
        BuiltinSpeechTokenizer.random().encode(np.zeros((2, 100), dtype=np.float32))
