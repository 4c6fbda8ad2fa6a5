"""CosyVoice2 tokenizer weights from the local S3 endpoint: copied once, refreshed on change."""

from __future__ import annotations

import numpy as np
import pytest

from dpm_worker import storage
from dpm_worker.errors import ModelError
from dpm_worker.speech import fetch_weights

pytestmark = pytest.mark.integration


def _upload(data: bytes, uri: str) -> None:
    fs, path = storage.get_filesystem(uri)
    with fs.open(path, "wb") as handle:
        handle.write(data)


def test_remote_weights_are_cached_and_refreshed(tmp_path, s3_bucket):
    uri = f"s3://{s3_bucket}/tokenizers/speech_tokenizer_v2.safetensors"
    cache = tmp_path / "cache"
    _upload(b"first version", uri)
    local = fetch_weights(uri, cache_dir=cache)
    assert (
        local.read_bytes() == b"first version" and local.name == "speech_tokenizer_v2.safetensors"
    )
    mtime = local.stat().st_mtime_ns
    assert fetch_weights(uri, cache_dir=cache) == local
    assert local.stat().st_mtime_ns == mtime  # reused, not copied again
    _upload(b"second, longer version", uri)
    assert fetch_weights(uri, cache_dir=cache).read_bytes() == b"second, longer version"
    assert not [p for p in local.parent.iterdir() if ".part-" in p.name]
    with pytest.raises(ModelError, match="missing.safetensors"):
        fetch_weights(f"s3://{s3_bucket}/missing.safetensors", cache_dir=cache)


def test_tokenizer_from_s3_equals_tokenizer_from_disk(tmp_path, s3_bucket):
    pytest.importorskip("s3tokenizer")
    import torch
    from safetensors.torch import save_file

    from dpm_worker.speech import CosyVoiceTokenizer, CosyVoiceTokenizerConfig, build_model

    config = CosyVoiceTokenizerConfig(n_audio_state=128, n_audio_head=2, n_audio_layer=1)
    torch.manual_seed(0)
    path = tmp_path / "tok.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(config).state_dict().items()}, str(path))
    uri = f"s3://{s3_bucket}/tok.safetensors"
    _upload(path.read_bytes(), uri)
    wave = np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.1
    local = CosyVoiceTokenizer(path, config, device="cpu")
    remote = CosyVoiceTokenizer(uri, config, device="cpu", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(remote.encode(wave), local.encode(wave))
    assert remote.fingerprint == local.fingerprint
