"""Conversation checkpoints: save mid-way, restore into a fresh memory, continue exactly."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from dpm_worker.memory import (
    ConversationLabeler,
    ConversationState,
    LabelingConfig,
    MemoryConfig,
    TemporaryLoraMemory,
)
from dpm_worker.model import EmotionModel
from dpm_worker.tables import CheckpointKey, CheckpointStore, decode_checkpoint, encode_checkpoint
from dpm_worker.utterance import Utterance

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# prior: the product's default (speaker scope, SGD). audio: the paper's variant, with AdamW so
# that the optimizer's moments and step count must survive the checkpoint too.
CONFIGS = {
    "prior": LabelingConfig(mode="dpm", window_tokens=32),
    "audio": LabelingConfig(
        mode="dpm",
        window_tokens=32,
        memory=MemoryConfig(
            write_target="audio", optimizer="adamw", lr=1e-2, warmup_steps=3, scope="speaker"
        ),
    ),
}
KEY = CheckpointKey("random-0", "cfg", "inputs")


def conversation(n: int, seed: int = 3) -> list[Utterance]:
    rng = np.random.default_rng(seed)
    speakers = ["ann", "bob", "cy"]
    return [
        Utterance(
            "conv",
            i,
            speakers[int(rng.integers(0, 3))],
            audio_ids=rng.integers(0, 32, size=12).astype(np.int64),
        )
        for i in range(n)
    ]


def probs(rows) -> np.ndarray:
    return np.stack([r.probs for r in rows])


@pytest.mark.parametrize("target", sorted(CONFIGS))
def test_resume_from_stored_checkpoint_equals_uninterrupted_run(tmp_path, target) -> None:
    config = CONFIGS[target]
    utts = conversation(16)
    whole = ConversationLabeler(EmotionModel.random(seed=0), config).label_conversation(utts)
    assert np.ptp(probs(whole)[:, 0]) > 1e-3  # the memory moves the reads

    store = CheckpointStore(str(tmp_path), "run1")
    first = ConversationLabeler(EmotionModel.random(seed=0), config)
    saved: list[int] = []

    def checkpoint(rows, slots, history) -> None:
        if len(rows) in (6, 9):
            store.save("conv", KEY, first.export_state(rows, slots, history))
            saved.append(len(rows))
        if len(rows) == 11:
            raise KeyboardInterrupt  # the actor dies after utterance 20

    with pytest.raises(KeyboardInterrupt):
        first.label_conversation(utts, after_utterance=checkpoint)
    names = os.listdir(store.folder_uri("conv"))
    assert len(names) == 1 and names[0].startswith("00000009-")  # older ones dropped

    # A fresh process: a new model object and memory, nothing shared with the first.
    state = store.load("conv", KEY)
    assert state is not None and state.position == 9
    assert sum(k.endswith(".steps") for k in state.tensors) == len(state.speaker_slots) == 3
    fresh = ConversationLabeler(EmotionModel.random(seed=0), config)
    resumed = fresh.label_conversation(utts, resume=state)
    assert [r.utterance.utterance_index for r in resumed] == list(range(16))
    np.testing.assert_allclose(probs(resumed), probs(whole), rtol=0, atol=1e-6)
    assert [r.emotion for r in resumed] == [r.emotion for r in whole]


def test_memory_state_roundtrip_restores_slots_and_optimizer() -> None:
    model = EmotionModel.random(seed=0)
    cfg = MemoryConfig(write_target="audio", optimizer="adamw", lr=1e-2, scope="speaker")
    memory = TemporaryLoraMemory(model.model, cfg)
    ids = torch.randint(0, model.vocab.size, (1, 30), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :10] = -100
    memory.write(2, ids, labels)
    state = memory.state_dict()
    assert {k.split(".")[1] for k in state} == {"2"}  # only written slots
    assert any(".opt." in k and k.endswith("exp_avg_sq") for k in state)
    other = TemporaryLoraMemory(EmotionModel.random(seed=0).model, cfg)
    other.load_state_dict(state)
    restored = other.state_dict()
    assert state.keys() == restored.keys()
    assert all(torch.equal(state[k], restored[k]) for k in state)
    other.reset()
    assert other.state_dict() == {}


def test_encode_decode_roundtrip_without_pickle() -> None:
    state = ConversationState(
        position=2,
        speaker_slots={"a": 0, "b": 1},
        history=[5, 6, 7],
        probs=np.array([[0.1, 0.9], [0.7, 0.3]], dtype=np.float32),
        ms=[1.5, 2.5],
        context_tokens=[3, 9],
        tensors={"slot.0.steps": torch.tensor(4), "rng.torch": torch.get_rng_state()},
    )
    data = encode_checkpoint(state, KEY)
    assert b"pickle" not in data[:200] and data[8:9] == b"{"  # a JSON header: safetensors
    back, key = decode_checkpoint(data)
    assert key == KEY and back.position == 2 and back.speaker_slots == {"a": 0, "b": 1}
    assert back.history == [5, 6, 7] and back.ms == [1.5, 2.5] and back.context_tokens == [3, 9]
    assert np.array_equal(back.probs, state.probs)
    assert torch.equal(back.tensors["rng.torch"], state.tensors["rng.torch"])
    with pytest.raises(ValueError):
        decode_checkpoint(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")


@pytest.mark.parametrize(
    "other",
    [
        replace(KEY, model_fingerprint="random-1"),
        replace(KEY, labeling_hash="other-config"),
        replace(KEY, inputs_digest="changed-audio"),
    ],
)
def test_checkpoint_for_another_model_or_config_is_ignored(tmp_path, caplog, other) -> None:
    config = CONFIGS["prior"]
    utts = conversation(12)
    labeler = ConversationLabeler(EmotionModel.random(seed=0), config)
    store = CheckpointStore(str(tmp_path), "run1")

    def checkpoint(rows, slots, history) -> None:
        if len(rows) == 6:
            store.save("conv", other, labeler.export_state(rows, slots, history))

    labeler.label_conversation(utts, after_utterance=checkpoint)
    with caplog.at_level(logging.WARNING, logger="dpm_worker.tables.checkpoints"):
        assert store.load("conv", KEY) is None
    field = next(
        f
        for f in ("model_fingerprint", "labeling_hash", "inputs_digest")
        if getattr(other, f) != getattr(KEY, f)
    )
    assert field in caplog.text and "restarts" in caplog.text
    assert store.load("conv", other) is not None  # the same key would have resumed


def test_unreadable_newest_falls_back_to_older_and_delete_removes_all(tmp_path, caplog) -> None:
    store = CheckpointStore(str(tmp_path), "run1")
    state = ConversationState(1, {"a": 0}, [1], np.ones((1, 2), np.float32), [0.0], [1], {})
    store.save("conv", KEY, state)
    torn = os.path.join(store.folder_uri("conv"), "00000009-0123456789ab.safetensors")
    with open(torn, "wb") as fh:
        fh.write(b"garbage")
    with caplog.at_level(logging.WARNING, logger="dpm_worker.tables.checkpoints"):
        loaded = store.load("conv", KEY)
    assert loaded is not None and loaded.position == 1 and "unreadable" in caplog.text
    store.delete("conv")
    assert store.load("conv", KEY) is None and not os.path.exists(store.folder_uri("conv"))
    store.delete("never-written")  # no error
