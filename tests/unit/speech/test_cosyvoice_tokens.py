"""CosyVoice2 S3Tokenizer adapter: shapes, rate and weight loading with random weights.

The encoder is built with the package's own v2 classes in a tiny shape (1 block, width 128)
and random weights; nothing is downloaded.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dpm_worker.errors import AudioError, ConfigError, ModelError
from dpm_worker.speech import (
    INSTALL_HINT,
    TOKENIZER_CONFIG,
    CosyVoiceTokenizer,
    CosyVoiceTokenizerConfig,
    build_model,
    fetch_weights,
    s3tokenizer_available,
)

TINY = CosyVoiceTokenizerConfig(n_audio_state=128, n_audio_head=2, n_audio_layer=1)
SR = 16000


def expected_codes(n_samples: int) -> int:
    """The package's rule: 100 Hz mel frames, then two stride-2 convolutions."""
    return math.ceil((n_samples // 160) / 4)


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """A voiced tone with a moving pitch plus noise: enough spectral change to vary the codes."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SR))) / SR
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    wave = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / SR) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (wave + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def random_weights(tmp_path, seed: int, config=TINY, name="tok.safetensors"):
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = build_model(config)
    path = tmp_path / name
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path, model


@pytest.fixture
def s3t():
    return pytest.importorskip("s3tokenizer")


@pytest.fixture
def tokenizer(s3t, tmp_path):
    path, _ = random_weights(tmp_path, seed=0)
    return CosyVoiceTokenizer(path, TINY, device="cpu")


def test_config_rejects_unknown_model_and_bad_head_width():
    with pytest.raises(ConfigError, match="speech_tokenizer_v9"):
        CosyVoiceTokenizerConfig(model_name="speech_tokenizer_v9")
    with pytest.raises(ConfigError, match="n_audio_state=100"):
        CosyVoiceTokenizerConfig(n_audio_state=100, n_audio_head=2)
    with pytest.raises(ConfigError, match="n_audio_layer must be >= 1, got 0"):
        CosyVoiceTokenizerConfig(n_audio_state=128, n_audio_head=2, n_audio_layer=0)


def test_missing_local_weights_name_the_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ModelError, match="nope.safetensors"):
        fetch_weights(missing)


@pytest.mark.skipif(s3tokenizer_available(), reason="s3tokenizer is installed")
def test_missing_package_says_how_to_install(tmp_path):
    with pytest.raises(ConfigError, match="dpm-emotion\\[cosyvoice\\]") as info:
        CosyVoiceTokenizer(tmp_path / "w.safetensors", TINY)
    assert INSTALL_HINT in str(info.value)


@pytest.mark.parametrize("seconds", [1.0, 3.2])
def test_encode_gives_25_int64_codes_per_second(tokenizer, seconds):
    codes = tokenizer.encode(speechlike(seconds))
    assert tokenizer.rate_hz == 25.0 and tokenizer.vocab_size == 3**8
    assert codes.dtype == np.int64 and codes.ndim == 1
    assert len(codes) == round(seconds * 25)
    assert codes.min() >= 0 and codes.max() < tokenizer.vocab_size
    assert len(np.unique(codes)) > 1  # a constant output would mean the input is ignored


@pytest.mark.parametrize("n_samples", [0, 159, 160, 200, 201, 319, 641, 16161, 39_520, 40_001])
def test_code_count_follows_the_frame_rule(tokenizer, n_samples):
    wave = speechlike(n_samples / SR)[:n_samples]
    assert len(tokenizer.encode(wave)) == expected_codes(n_samples)


def test_long_audio_keeps_the_rate(tokenizer):
    # Past 30 s the package encodes overlapping 30 s windows and merges their codes.
    codes = tokenizer.encode(speechlike(35.0))
    assert len(codes) == 35 * 25
    assert codes.dtype == np.int64 and codes.max() < tokenizer.vocab_size


def test_codes_come_from_the_loaded_weights(s3t, tmp_path):
    wave = speechlike(2.0, seed=3)
    path0, model0 = random_weights(tmp_path, seed=0)
    path1, _ = random_weights(tmp_path, seed=1, name="other.pt")
    tok0 = CosyVoiceTokenizer(path0, TINY, device="cpu")
    tok1 = CosyVoiceTokenizer(path1, TINY, device="cpu")
    mel = s3t.log_mel_spectrogram(torch.from_numpy(wave), n_mels=128)
    direct, direct_len = model0.eval().quantize(mel[None], torch.tensor([mel.shape[1]]))
    np.testing.assert_array_equal(tok0.encode(wave), direct[0, : int(direct_len[0])].numpy())
    np.testing.assert_array_equal(tok0.encode(wave), tok0.encode(wave))
    assert not np.array_equal(tok0.encode(wave), tok1.encode(wave))
    assert tok0.fingerprint != tok1.fingerprint


def test_batch_encoding_equals_one_by_one(tokenizer):
    # Lengths that pad differently, one without codes and one past the package's 30 s window.
    waves = [speechlike(s, seed=i) for i, s in enumerate([1.0, 3.2, 0.005, 2.47, 35.0])]
    batch = tokenizer.encode_batch(waves)
    assert [len(c) for c in batch] == [expected_codes(len(w)) for w in waves]
    for wave, codes in zip(waves, batch, strict=True):
        np.testing.assert_array_equal(codes, tokenizer.encode(wave))


def test_bad_waveforms_are_rejected(tokenizer):
    with pytest.raises(ConfigError, match="\\(2, 16000\\)"):
        tokenizer.encode(np.zeros((2, SR), dtype=np.float32))
    wave = speechlike(1.0)
    wave[100] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        tokenizer.encode(wave)


def test_weights_of_another_shape_are_refused(s3t, tmp_path):
    path, _ = random_weights(tmp_path, seed=0)
    two_layers = CosyVoiceTokenizerConfig(n_audio_state=128, n_audio_head=2, n_audio_layer=2)
    with pytest.raises(ModelError, match="do not fit") as info:
        CosyVoiceTokenizer(path, two_layers, device="cpu")
    assert str(path) in str(info.value)


def test_pickled_objects_are_not_loaded(s3t, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": ModelError("not a tensor")}, path)
    with pytest.raises(ModelError, match="cannot read speech tokenizer weights"):
        CosyVoiceTokenizer(path, TINY, device="cpu")


def test_unknown_weight_format_is_refused(s3t, tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"x")
    with pytest.raises(ModelError, match="unknown weights file type '.npz'"):
        CosyVoiceTokenizer(path, TINY, device="cpu")


def test_save_and_from_config_round_trip(tokenizer, tmp_path):
    folder = tmp_path / "model"
    written = tokenizer.save(folder)
    assert sorted(p.name for p in written) == [TOKENIZER_CONFIG, "speech_tokenizer.safetensors"]
    data = json.loads((folder / TOKENIZER_CONFIG).read_text())
    assert data.pop("type") == "s3tokenizer"
    loaded = CosyVoiceTokenizer.from_config(data, folder, device="cpu")
    assert loaded.config == TINY
    wave = speechlike(3.2, seed=5)
    np.testing.assert_array_equal(loaded.encode(wave), tokenizer.encode(wave))


def test_from_config_resolves_relative_weights_and_rejects_bad_config(s3t, tmp_path):
    path, _ = random_weights(tmp_path, seed=0)
    data = {
        "weights": path.name,
        **{k: getattr(TINY, k) for k in ("n_audio_state", "n_audio_head", "n_audio_layer")},
    }
    tok = CosyVoiceTokenizer.from_config(data, tmp_path, device="cpu")
    assert tok.weights_path == path
    with pytest.raises(ModelError, match="n_audio_layer"):
        CosyVoiceTokenizer.from_config({**data, "n_audio_layer": 0}, tmp_path)
