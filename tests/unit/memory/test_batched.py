"""The batched engine equals the single-conversation reference (peft) path, row for row."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from dpm_worker.errors import ConfigError
from dpm_worker.memory import (
    BatchedLoraMemory,
    LabelingConfig,
    MemoryConfig,
    label_batched,
)
from dpm_worker.model import EmotionModel
from dpm_worker.utterance import Utterance
from tests.oracle.labeling import ConversationLabeler
from tests.oracle.lora import TemporaryLoraMemory

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AUDIO = MemoryConfig(lr=1e-2, scope="conversation", write_target="audio")
TARGETS = {
    "audio": AUDIO,
    "audio+prediction": replace(AUDIO, write_target="audio+prediction", confidence_gate=0.3),
    "audio-adamw-speaker": replace(
        AUDIO, optimizer="adamw", lr=3e-3, warmup_steps=2, weight_decay=0.01, scope="speaker"
    ),
    "prior": MemoryConfig(),  # the default: speaker scope, prior at the speaker token, SGD
    "prior-history": MemoryConfig(prior_input="history", read_gate=0.6),
}


def make_model() -> EmotionModel:
    return EmotionModel.random(seed=0, max_context=256)


def conversations(n: int, seed: int = 0) -> list[list[Utterance]]:
    """Conversations of different lengths (3..10 utterances) and speakers (2 or 3)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(n):
        speakers = "abc"[: 2 + c % 2]
        length = int(rng.integers(3, 11))
        out.append(
            [
                Utterance(
                    f"c{c}",
                    i,
                    speakers[int(rng.integers(0, len(speakers)))],
                    audio_ids=rng.integers(0, 32, size=int(rng.integers(5, 25))),
                )
                for i in range(length)
            ]
        )
    return out


def alone(config: LabelingConfig, convs) -> list[np.ndarray]:
    labeler = ConversationLabeler(make_model(), config)
    try:
        return [np.stack([r.probs for r in labeler.label_conversation(c)]) for c in convs]
    finally:
        labeler.close()


def check_same(batched, reference) -> None:
    for rows, ref in zip(batched, reference, strict=True):
        probs = np.stack([r.probs for r in rows])
        assert probs.shape == ref.shape
        assert np.abs(probs - ref).max() <= 1e-5
        assert np.array_equal(probs.argmax(axis=1), ref.argmax(axis=1))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_write_target_batched_equals_alone(target: str) -> None:
    config = LabelingConfig(mode="dpm", window_tokens=48, memory=TARGETS[target])
    convs = conversations(9)
    reference = alone(config, convs)
    # The memory mattered: dpm differs from the window mode on the same input.
    window = alone(replace(config, mode="window"), convs)
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(reference, window, strict=True))
    for k in (1, 3, 8):  # 9 conversations: with K < 9 they join and leave mid-way
        check_same(label_batched(make_model(), config, convs, k), reference)


@pytest.mark.parametrize("mode", ["utterance", "window", "full"])
def test_modes_without_memory_batched_equal_alone(mode: str) -> None:
    config = LabelingConfig(mode=mode, window_tokens=48)
    convs = conversations(5, seed=1)
    check_same(label_batched(make_model(), config, convs, 3), alone(config, convs))


def test_audio_plus_emotion_on_predicted_history_batched_equals_alone() -> None:
    memory = replace(AUDIO, write_target="audio+emotion")
    config = LabelingConfig(mode="dpm", window_tokens=48, history_labels="predicted", memory=memory)
    convs = conversations(4, seed=2)
    check_same(label_batched(make_model(), config, convs, 3), alone(config, convs))


# Reads are softmaxes of float32 logits that the batched and the reference paths sum in
# different orders: each logit carries a rounding error of a few float32 ulps times the depth of
# the tiny model (2 layers, dot products of width 64: about 64 * 6e-8 relative per matmul), and
# a probability moves by at most 1/4 of a logit difference; 1e-5 bounds that with a wide margin
# on any CPU. Measured on one CPU: <= 3e-8.
READ_ATOL = 1e-5


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_batched_writes_train_each_slot_as_alone(optimizer: str) -> None:
    """Slots written a different number of times (per-slot AdamW steps) read as alone."""
    config = replace(AUDIO, optimizer=optimizer, warmup_steps=1, weight_decay=0.1, lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randint(3, 40, (1, n), generator=gen) for n in (30, 12, 21)]
    writes = {0: [0, 1, 2], 1: [1, 2], 2: [2]}  # slot -> the rounds it is written in

    model = make_model()
    memory = BatchedLoraMemory(model.model, config, 3)
    lm = model.model
    from dpm_worker.memory.step import AudioWrite, StepRow

    step = AudioWrite(lm, model.vocab.emotion_ids, memory, config)
    for round_ in range(3):
        rows = [
            StepRow(inputs[s][0].tolist(), 0, slot=s, labels=[-100] * 5 + inputs[s][0, 5:].tolist())
            for s in range(3)
            if round_ in writes[s]
        ]
        step.write(rows)
    probe = torch.cat([inputs[1], inputs[0][:, :9]], dim=1)  # any stream: reads compare
    with torch.no_grad():
        memory.use(None)
        base = model.emotion_probs(probe)
    for slot in range(3):
        ref_model = make_model()
        ref = TemporaryLoraMemory(ref_model.model, config)
        ids = inputs[slot]
        labels = ids.clone()
        labels[:, :5] = -100
        for _ in writes[slot]:
            ref.write(0, ids, labels)
        with torch.no_grad():
            memory.use([slot])
            got, want = model.emotion_probs(probe), ref_model.emotion_probs(probe)
        # What the product promises is the read. The written values themselves are compared
        # only under SGD, whose step is linear in the gradient: AdamW divides by sqrt(v) + eps,
        # so where a gradient is float noise (the two paths' summation orders) its step is noise
        # too (a value may move by up to lr), yet such a value barely moves a read.
        # The writes moved the read well beyond the tolerance (measured: >= 1.5e-4), so a
        # slot reading another slot's values or none would fail the comparison below.
        assert (got - base).abs().max() > 10 * READ_ATOL
        torch.testing.assert_close(got, want, rtol=0, atol=READ_ATOL)
        if optimizer == "sgd":
            expected = [p.detach() for p in ref.trainable_parameters()]
            values = memory.slot_state(slot)
            assert len(values) == len(expected)
            for g, e in zip(values, expected, strict=True):
                # lr * (gradient noise ~1e-8) ~ 1e-10, plus float32 rounding of values ~1e-2.
                torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
        assert memory.steps[slot] == 2 * len(writes[slot])


def test_reset_one_slot_while_others_go_on() -> None:
    model = make_model()
    memory = BatchedLoraMemory(model.model, AUDIO, 2)
    initial = [memory.slot_state(s) for s in range(2)]
    for p in memory.params:
        with torch.no_grad():
            p.add_(1.0)
    memory.steps = [3, 3]
    memory.reset(0)
    assert all(torch.equal(a, b) for a, b in zip(memory.slot_state(0), initial[0], strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(memory.slot_state(1), initial[1], strict=True))
    assert memory.steps == [0, 3]
    # memory off and a reset slot both compute the backbone bit for bit
    ids = torch.randint(3, 40, (1, 20), generator=torch.Generator().manual_seed(1))
    memory.use(None)
    with torch.no_grad():
        base = model.model(input_ids=ids).logits
        memory.use([0])
        assert torch.equal(model.model(input_ids=ids).logits, base)
        memory.use([1])
        assert not torch.equal(model.model(input_ids=ids).logits, base)
    memory.close()
    with torch.no_grad():
        assert torch.equal(model.model(input_ids=ids).logits, base)
    with pytest.raises(ConfigError):
        BatchedLoraMemory(make_model().model, AUDIO, 0)
    with pytest.raises(ConfigError):
        BatchedLoraMemory(make_model().model, replace(AUDIO, target_modules=("nope",)), 2)


@pytest.mark.parametrize("mode", ["window", "dpm"])
def test_history_reuse_equals_recompute_while_the_window_holds_the_whole_history(
    mode: str,
) -> None:
    """Reused keys and values are the recomputed ones until the window starts to slide."""
    config = LabelingConfig(mode=mode, window_tokens=1000)  # dpm: the default prior memory
    convs = conversations(4, seed=3)
    model = EmotionModel.random(seed=0, max_context=1024)
    recompute = label_batched(model, config, convs, 1)
    reuse = label_batched(model, replace(config, history_cache="reuse"), convs, 3)
    check_same(reuse, [np.stack([r.probs for r in c]) for c in recompute])


def test_history_reuse_batched_equals_reuse_alone_with_a_sliding_window() -> None:
    config = LabelingConfig(mode="dpm", window_tokens=40)
    convs = conversations(5, seed=4)
    reusing = replace(config, history_cache="reuse")
    one = label_batched(make_model(), reusing, convs, 1)
    three = label_batched(make_model(), reusing, convs, 3)
    check_same(three, [np.stack([r.probs for r in c]) for c in one])
    recompute = label_batched(make_model(), config, convs, 3)
    # a sliding window: reuse reads states, not tokens (dpm_worker.memory.cache), so it differs
    assert any(
        np.abs(np.stack([r.probs for r in a]) - np.stack([r.probs for r in b])).max() > 1e-4
        for a, b in zip(one, recompute, strict=True)
    )
    with pytest.raises(ConfigError):
        label_batched(make_model(), replace(config, history_cache="sometimes"), convs, 3)
