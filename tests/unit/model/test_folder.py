"""Model folder manifests: hashes stored at save, a cheap check at load, a full one on request."""

import json

import pytest

from dpm_worker.errors import ModelError
from dpm_worker.model import EmotionModel, default_model_path, load_model, save_model
from dpm_worker.model.folder import (
    EDGE_BYTES,
    MANIFEST_NAME,
    fingerprint_of,
    sha256_file,
    verify_folder,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("folder") / "m"
    save_model(EmotionModel.random(seed=3), str(folder))
    return folder


def fresh_copy(saved, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    return copy


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_manifest_stores_hashes_and_fingerprint(saved):
    manifest = json.loads((saved / MANIFEST_NAME).read_text())
    weights = manifest["files"]["model.safetensors"]
    assert weights["sha256"] == sha256_file(saved / "model.safetensors")
    assert weights["size"] > 2 * EDGE_BYTES and len(weights["edges_sha256"]) == 64
    assert manifest["fingerprint"] == fingerprint_of(manifest["files"])
    assert verify_folder(saved)["fingerprint"] == manifest["fingerprint"]


def test_cheap_check_catches_ends_and_sizes_full_hash_catches_the_middle(saved, tmp_path):
    folder = fresh_copy(saved, tmp_path)
    weights = folder / "model.safetensors"
    middle = weights.stat().st_size // 2
    flip_byte(weights, middle)
    verify_folder(folder)  # the cheap check reads only the ends: a middle flip passes it
    with pytest.raises(ModelError, match="model.safetensors does not match its sha256"):
        verify_folder(folder, full_hash=True)
    with pytest.raises(ModelError, match="sha256"):
        load_model(str(folder), verify_weights=True)
    flip_byte(weights, middle)
    flip_byte(weights, 10)  # the header: caught cheaply
    with pytest.raises(ModelError, match="edges_sha256"):
        verify_folder(folder)
    flip_byte(weights, 10)
    with open(weights, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match="bytes, the manifest says"):
        verify_folder(folder)


def test_a_manifest_whose_fingerprint_does_not_match_its_hashes_is_rejected(saved, tmp_path):
    folder = fresh_copy(saved, tmp_path)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["files"]["model.safetensors"]["sha256"] = "0" * 64
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="is not the one its file hashes give"):
        verify_folder(folder)


def test_packaged_default_model_carries_the_stored_hashes():
    folder = default_model_path()
    if not (folder / MANIFEST_NAME).is_file():
        pytest.skip("no default model")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert all("edges_sha256" in meta for meta in manifest["files"].values())
    assert verify_folder(folder, full_hash=True)["fingerprint"] == manifest["fingerprint"]
