"""Conversation checkpoints: named tensors and a JSON header under a key, newest valid first.

The store knows no memory type; a labeler's state round trip through it is tested with the
labeler (tests/unit/memory/test_resume.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import pytest
import torch

from dpm_worker.tables import CheckpointKey, CheckpointStore, decode_checkpoint, encode_checkpoint

KEY = CheckpointKey("random-0", "cfg", "inputs")
HEADER = {"position": 2, "speaker_slots": {"a": 0, "b": 1}}


def tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "slot.0.steps": torch.tensor(4),
        "slot.0.param.0": torch.randn(3, 5, generator=g),
        "rows.ms": torch.tensor([1.5, 2.5], dtype=torch.float64),
        "rng.torch": torch.get_rng_state(),
    }


def pair(found: dict[str, torch.Tensor], header: dict) -> tuple[dict, dict]:
    return found, header


def test_encode_decode_roundtrip_without_pickle() -> None:
    saved = tensors()
    data = encode_checkpoint(saved, HEADER, KEY)
    assert b"pickle" not in data[:200] and data[8:9] == b"{"  # a JSON header: safetensors
    back, header, key = decode_checkpoint(data)
    assert key == KEY and header == HEADER
    assert back.keys() == saved.keys()
    assert all(torch.equal(back[k], saved[k]) and back[k].dtype == saved[k].dtype for k in saved)
    with pytest.raises(ValueError):
        decode_checkpoint(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")


def test_newest_checkpoint_wins_and_older_ones_are_dropped(tmp_path) -> None:
    store = CheckpointStore(str(tmp_path), "run1")
    store.save("conv", KEY, 6, tensors(6), {**HEADER, "position": 6})
    store.save("conv", KEY, 9, tensors(9), {**HEADER, "position": 9})
    names = os.listdir(store.folder_uri("conv"))
    assert len(names) == 1 and names[0].startswith("00000009-")
    found = store.load("conv", KEY, pair)
    assert found is not None and found[1]["position"] == 9
    assert torch.equal(found[0]["slot.0.param.0"], tensors(9)["slot.0.param.0"])


@pytest.mark.parametrize(
    "other",
    [
        replace(KEY, model_fingerprint="random-1"),
        replace(KEY, labeling_hash="other-config"),
        replace(KEY, inputs_digest="changed-audio"),
    ],
)
def test_checkpoint_for_another_model_or_config_is_ignored(tmp_path, caplog, other) -> None:
    store = CheckpointStore(str(tmp_path), "run1")
    store.save("conv", other, 6, tensors(), HEADER)
    with caplog.at_level(logging.WARNING, logger="dpm_worker.tables.checkpoints"):
        assert store.load("conv", KEY, pair) is None
    field = next(
        f
        for f in ("model_fingerprint", "labeling_hash", "inputs_digest")
        if getattr(other, f) != getattr(KEY, f)
    )
    assert field in caplog.text and "restarts" in caplog.text
    assert store.load("conv", other, pair) is not None  # the same key would have resumed


def test_unreadable_newest_falls_back_to_older_and_delete_removes_all(tmp_path, caplog) -> None:
    store = CheckpointStore(str(tmp_path), "run1")
    store.save("conv", KEY, 1, tensors(), {**HEADER, "position": 1})
    torn = os.path.join(store.folder_uri("conv"), "00000009-0123456789ab.safetensors")
    with open(torn, "wb") as fh:
        fh.write(b"garbage")
    with caplog.at_level(logging.WARNING, logger="dpm_worker.tables.checkpoints"):
        loaded = store.load("conv", KEY, pair)
    assert loaded is not None and loaded[1]["position"] == 1 and "unreadable" in caplog.text
    store.delete("conv")
    assert store.load("conv", KEY, pair) is None and not os.path.exists(store.folder_uri("conv"))
    store.delete("never-written")  # no error


def test_a_checkpoint_its_parser_rejects_is_skipped_for_an_older_one(tmp_path, caplog) -> None:
    store = CheckpointStore(str(tmp_path), "run1")
    store.save("conv", KEY, 3, tensors(), {**HEADER, "position": 3})
    store.save("conv", KEY, 5, {"other": torch.zeros(1)}, {"position": 5})
    # the older one was deleted by the newer writer: write it again under its own name
    store.save("conv", KEY, 3, tensors(), {**HEADER, "position": 3})

    def parse(found: dict, header: dict) -> int:
        if "slot.0.steps" not in found:
            raise ValueError("no memory")
        return int(header["position"])

    with caplog.at_level(logging.WARNING, logger="dpm_worker.tables.checkpoints"):
        assert store.load("conv", KEY, parse) == 3
    assert "unreadable" in caplog.text and "no memory" in caplog.text
