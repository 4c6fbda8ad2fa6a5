"""The model store against a real (local, moto) S3 endpoint: save, load, cache, verify."""

import pytest
import torch

from dpm_worker.errors import ModelError
from dpm_worker.model import EmotionModel, default_model_path, load_model, save_model
from dpm_worker.storage import get_filesystem

pytestmark = pytest.mark.integration


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DPM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def probe(model: EmotionModel) -> torch.Tensor:
    v = model.vocab
    ids = v.utterance_tokens([1, 5, 9, 3], 0) + v.utterance_tokens([7, 2, 2], 1)
    return model.emotion_probs(torch.tensor([ids]))


def test_save_to_s3_and_load_back(s3_bucket, cache):
    model = EmotionModel.random(seed=4)
    uri = f"s3://{s3_bucket}/models/tiny"
    save_model(model, uri)
    loaded = load_model(uri, device="cpu")
    torch.testing.assert_close(probe(loaded), probe(model))
    assert list(cache.iterdir())  # copied into the local cache
    again = load_model(uri)  # cached files are re-verified, not re-downloaded blindly
    assert again.fingerprint == loaded.fingerprint


def test_incomplete_or_tampered_remote_model_is_rejected(s3_bucket, cache):
    uri = f"s3://{s3_bucket}/models/broken"
    save_model(EmotionModel.random(seed=1), uri)
    fs, root = get_filesystem(uri)
    fs.rm(f"{root}/model.safetensors")
    fs.invalidate_cache()
    with pytest.raises(ModelError, match="model.safetensors"):
        load_model(uri)
    fs.rm(f"{root}/dpm_manifest.json")  # an interrupted upload has no manifest
    fs.invalidate_cache()
    with pytest.raises(ModelError, match="dpm_manifest.json"):
        load_model(uri)


def test_cached_copy_is_refreshed_when_the_remote_changes(s3_bucket, cache):
    uri = f"s3://{s3_bucket}/models/moving"
    save_model(EmotionModel.random(seed=1), uri)
    first = load_model(uri)
    save_model(EmotionModel.random(seed=2), uri)
    get_filesystem(uri)[0].invalidate_cache()
    second = load_model(uri)
    assert second.fingerprint != first.fingerprint
    assert not torch.allclose(probe(first), probe(second))


@pytest.mark.skipif(
    not (default_model_path() / "dpm_manifest.json").is_file(), reason="no default model"
)
def test_default_model_from_package_and_s3_scores_identically(s3_bucket, cache):
    packaged = load_model(device="cpu")
    fs, root = get_filesystem(f"s3://{s3_bucket}/default")
    fs.put(str(default_model_path()) + "/", root, recursive=True)
    remote = load_model(f"s3://{s3_bucket}/default", device="cpu")
    assert remote.fingerprint == packaged.fingerprint
    torch.testing.assert_close(probe(remote), probe(packaged), rtol=0, atol=0)


LOADER = """
import json, sys
from dpm_worker.model import load_model
from dpm_worker.model.folder import fetch_folder
local, downloaded = fetch_folder(sys.argv[1])
model = load_model(sys.argv[1])  # the copy is complete: nothing more is downloaded
print(json.dumps({"local": str(local), "downloaded": downloaded, "fp": model.fingerprint}))
"""


def test_concurrent_loaders_on_a_node_download_once_and_reuse_the_copy(s3_bucket, cache):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    uri = f"s3://{s3_bucket}/models/shared"
    save_model(EmotionModel.random(seed=6), uri)
    env = {**os.environ, "DPM_CACHE_DIR": str(cache), "PYTHONPATH": str(repo)}
    loaders = [
        subprocess.Popen(
            [sys.executable, "-c", LOADER, uri], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [json.loads(p.communicate(timeout=300)[0]) for p in loaders]
    assert all(p.returncode == 0 for p in loaders)
    names = sorted(get_filesystem(uri)[0].ls(get_filesystem(uri)[1], detail=False))
    files = sorted(n.rsplit("/", 1)[-1] for n in names if not n.endswith("dpm_manifest.json"))
    downloaded = sorted(results[0]["downloaded"] + results[1]["downloaded"])
    assert downloaded == files  # every file exactly once, by whichever loader got the lock
    assert results[0]["local"] == results[1]["local"]
    assert results[0]["fp"] == results[1]["fp"]
    again = subprocess.run(
        [sys.executable, "-c", LOADER, uri], env=env, capture_output=True, text=True, timeout=300
    )
    assert json.loads(again.stdout)["downloaded"] == []
