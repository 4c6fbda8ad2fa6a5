"""Training the backbone through the DPM loop (dpm_worker/training/memory_loop.py), on tiny models."""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pytest
import torch

from dpm_worker.errors import ConfigError
from dpm_worker.memory import MemoryConfig
from dpm_worker.model import EmotionModel, load_model, save_model
from dpm_worker.training import (
    MemoryLoopConfig,
    MemoryLoopTrainer,
    TrainConfig,
    TrainingConversation,
    build_stream,
    training_conversation,
)
from dpm_worker.utterance import Utterance

MEMORY = MemoryConfig(
    lr=1e-2, scope="speaker", write_target="audio", optimizer="adamw", steps_per_utterance=1
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy_conversation(seed: int, n: int = 10) -> TrainingConversation:
    """Label k's utterances use audio codes 8k..8k+7 only: learnable from the utterance."""
    rng = np.random.default_rng(seed)
    utterances, labels = [], []
    for i in range(n):
        label = int(rng.integers(4))
        codes = rng.integers(8 * label, 8 * label + 8, size=int(rng.integers(6, 12)))
        utterances.append(Utterance(f"c{seed}", i, "ab"[i % 2], audio_ids=codes))
        labels.append(label)
    return TrainingConversation(f"c{seed}", utterances, labels)


def backbone_state(model: EmotionModel) -> dict[str, torch.Tensor]:
    return {
        k.replace(".base_layer", ""): v.detach().clone()
        for k, v in model.model.state_dict().items()
        if "lora_" not in k
    }


@pytest.mark.parametrize("write_target", ["audio", "audio+prediction"])
def test_reads_train_the_backbone(write_target: str) -> None:
    # audio+prediction reads first (the memory of earlier turns), then writes: the read's
    # backward must run before the write changes the adapter in place.
    model = EmotionModel.random(seed=1)
    convs = [toy_conversation(s) for s in range(4)]
    loop = MemoryLoopConfig(epochs=6, lr=1e-2, warmup_steps=0, utterances_per_step=4,
                            plain_every=0, window_tokens=32)  # fmt: skip
    memory = replace(MEMORY, write_target=write_target)
    trainer = MemoryLoopTrainer(model, memory, loop)
    history = trainer.train(convs, progress=False)
    assert len(history) == 6
    assert history[-1]["L_read"] < 0.6 * history[0]["L_read"], history
    assert trainer.validate(convs)["dpm"]["ua"] > 0.6


def test_without_an_update_the_backbone_is_untouched_and_only_the_memory_moves() -> None:
    model = EmotionModel.random(seed=2)
    before = backbone_state(model)
    # More utterances per update than the conversation has: writes and reads run, no step.
    loop = MemoryLoopConfig(epochs=1, utterances_per_step=1000, plain_every=0, window_tokens=32)
    trainer = MemoryLoopTrainer(model, MEMORY, loop)
    initial = [trainer.memory.slot_state(s) for s in range(trainer.memory.n_slots)]
    trainer.train([toy_conversation(3)], progress=False)
    after = backbone_state(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the writes ran (both speakers' adapters moved) and left no gradient on the backbone
    for slot in (0, 1):
        now = trainer.memory.slot_state(slot)
        assert any(not torch.equal(a, b) for a, b in zip(initial[slot], now, strict=True))
    assert trainer.memory.steps[:2] == [5, 5]


def test_validation_leaves_no_gradient_on_the_backbone() -> None:
    model = EmotionModel.random(seed=4)
    trainer = MemoryLoopTrainer(model, MEMORY, MemoryLoopConfig(window_tokens=32))
    convs = [toy_conversation(5), toy_conversation(6)]
    out = trainer.validate(convs)
    assert set(out) == {"window", "dpm"}
    assert out["dpm"]["n"] == out["window"]["n"] == 20
    assert all(p.grad is None for p in trainer.backbone_params)


def test_plain_batches_run_between_updates() -> None:
    model = EmotionModel.random(seed=6)
    convs = [toy_conversation(s) for s in range(2)]
    streams = [
        build_stream(model.vocab, c.conversation_id, [
            {"speaker": u.speaker, "codes": u.audio_ids, "emotion": model.vocab.labels[g]}
            for u, g in zip(c.utterances, c.labels, strict=True)
        ], aux_previous=1)
        for c in convs
    ]  # fmt: skip
    plain = TrainConfig(window_tokens=48, batch_size=2, aux_previous=1)
    loop = MemoryLoopConfig(epochs=1, utterances_per_step=5, plain_every=1, window_tokens=32)
    trainer = MemoryLoopTrainer(model, MEMORY, loop, plain=plain)
    before = backbone_state(model)
    trainer.train(convs, streams, progress=False)
    after = backbone_state(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_the_trained_model_saves_without_adapters(tmp_path) -> None:
    model = EmotionModel.random(seed=7)
    loop = MemoryLoopConfig(epochs=1, lr=1e-2, utterances_per_step=2, plain_every=0,
                            window_tokens=32)  # fmt: skip
    trainer = MemoryLoopTrainer(model, MEMORY, loop)
    trainer.train([toy_conversation(8)], progress=False)
    trained = trainer.trained_model()
    assert not any("lora_" in k or "base_layer" in k for k in trained.model.state_dict())
    save_model(trained, str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    ids = torch.tensor([[3, 10, 11, 12, 13]])
    trainer.memory.use(None)  # the backbone inside the trainer, memory off
    with torch.no_grad():
        inside = model.model(input_ids=ids).logits
        outside = loaded.model(input_ids=ids).logits
    assert torch.allclose(inside, outside, atol=1e-6)


def test_training_conversation_maps_labels_and_unlabelled_rows() -> None:
    rows = [
        {"utterance_index": 0, "speaker": "A", "codes": [1, 2], "emotion": "sad"},
        {"utterance_index": 1, "speaker": "B", "codes": [3], "emotion": None},
    ]
    conv = training_conversation("c", rows, ("neutral", "happy", "sad", "angry"))
    assert conv.labels == [2, -100]
    assert [u.speaker for u in conv.utterances] == ["A", "B"]


@pytest.mark.parametrize(
    "field, value",
    [("epochs", 0), ("lr", -1.0), ("utterances_per_step", 0), ("plain_every", -1),
     ("window_tokens", -5), ("grad_clip", 0.0)],
)  # fmt: skip
def test_bad_settings_name_the_field(field: str, value) -> None:
    with pytest.raises(ConfigError, match=f"memory_loop.{field}"):
        MemoryLoopConfig(**{field: value})


def test_train_config_accepts_the_memory_loop_sections(tmp_path) -> None:
    from pipelines.train import load_settings

    config = tmp_path / "t.yaml"
    config.write_text("memory_loop: {epochs: 1, window_tokens: 128}\nmemory: {lr: 0.001}\n")
    args = argparse.Namespace(config=str(config), epochs=None, seed=None, max_minutes=None,
                              threads=None, model_id=None, overrides=[], device=None,
                              workers=None, address=None)  # fmt: skip
    settings = load_settings(args)
    assert settings["memory_loop"].window_tokens == 128
    assert settings["memory"].lr == 1e-3
    config.write_text("memory_loop: {epochz: 1}\n")
    with pytest.raises(ConfigError, match="memory_loop"):
        load_settings(args)
    config.write_text("train: {epochs: 1}\n")
    assert load_settings(args)["memory_loop"] is None
