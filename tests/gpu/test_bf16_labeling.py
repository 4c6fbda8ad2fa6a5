"""The DPM loop on a bf16 backbone on CUDA: fp32 memory, exact invariants, determinism, speed.

Skipped without CUDA. ``infra/gpu_check.sh --dry-run`` runs them on CPU (a bf16 backbone works
there too) with tiny shapes by setting ``DPM_GPU_TESTS_ON_CPU=1``; on a GPU the throughput test
uses a wider backbone and a real floor.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from dpm_worker.memory import (
    LabelingConfig,
    MemoryConfig,
)
from dpm_worker.model import EmotionModel
from dpm_worker.utterance import Utterance
from tests.oracle.labeling import ConversationLabeler
from tests.oracle.lora import TemporaryLoraMemory

pytestmark = pytest.mark.gpu

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
# The paper's variant with a large lr, so one write visibly moves a random model's outputs.
FAST = MemoryConfig(
    lr=1e-2, steps_per_utterance=2, scope="conversation", write_target="audio", read_gate=1.0
)


def bf16_model(seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4) -> EmotionModel:
    """A random model whose backbone is bf16 on the test device (as ``load_model`` gives it)."""
    model = EmotionModel.random(seed=seed, hidden=hidden, layers=layers, heads=heads)
    model.model.to(device=DEVICE, dtype=torch.bfloat16)
    model.device = DEVICE
    return model


# bf16 matmuls on a CPU without AMX are slow: the CPU dry run labels shorter conversations.
UTTERANCES = 8 if ON_GPU else 3


def conversation(seed: int, n: int = UTTERANCES, lo: int = 10, hi: int = 30) -> list[Utterance]:
    rng = np.random.default_rng(seed)
    return [
        Utterance(
            "c", i, "ab"[i % 2], audio_ids=rng.integers(0, 32, size=int(rng.integers(lo, hi)))
        )
        for i in range(n)
    ]


def probs(rows) -> np.ndarray:
    return np.stack([r.probs for r in rows])


def logits(model: EmotionModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.model(input_ids=ids.to(DEVICE)).logits


def test_memory_tensors_are_fp32_under_a_bf16_backbone() -> None:
    model = bf16_model()
    memory = TemporaryLoraMemory(model.model, FAST)
    params = memory.trainable_parameters()
    assert params and {p.dtype for p in params} == {torch.float32}
    assert {p.device.type for p in params} == {DEVICE.type}
    frozen = [p for n, p in model.model.named_parameters() if "lora_" not in n]
    assert {p.dtype for p in frozen} == {torch.bfloat16}


def test_reset_restores_the_bf16_backbone_exactly() -> None:
    model = bf16_model()
    ids = torch.randint(0, model.vocab.size, (1, 40), generator=torch.Generator().manual_seed(1))
    base = logits(model, ids)
    memory = TemporaryLoraMemory(model.model, FAST)
    memory.activate(0)
    assert torch.equal(logits(model, ids), base)
    labels = ids.clone()
    labels[:, :20] = -100
    memory.write(0, ids.to(DEVICE), labels.to(DEVICE))
    assert not torch.equal(logits(model, ids), base)
    memory.reset()
    memory.activate(0)
    assert torch.equal(logits(model, ids), base)


def test_only_adapter_tensors_change_under_bf16() -> None:
    model = bf16_model()
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    labeler = ConversationLabeler(model, LabelingConfig(mode="dpm", memory=FAST))
    memory = labeler.memory
    moved = []
    original_write = memory.write

    def spy(slot, input_ids, labels, emotion_ids=None):  # the adapter moved during the run
        read = original_write(slot, input_ids, labels, emotion_ids)
        state = memory._slots[slot]
        pairs = zip(state.params, state.initial, strict=True)
        moved.append(any(not torch.equal(p, q) for p, q in pairs))
        return read

    memory.write = spy
    labeler.label_conversation(conversation(3))
    after = {k.replace(".base_layer", ""): v for k, v in model.model.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert moved and moved[-1]
    assert all("lora_" in n for n, p in model.model.named_parameters() if p.requires_grad)


def test_conversation_a_then_b_equals_b_alone_under_bf16() -> None:
    a, b = conversation(1), conversation(2)
    labeler = ConversationLabeler(bf16_model(), LabelingConfig(mode="dpm", memory=FAST))
    labeler.label_conversation(a)
    after_a = labeler.label_conversation(b)
    alone = ConversationLabeler(bf16_model(), LabelingConfig(mode="dpm", memory=FAST))
    assert np.array_equal(probs(after_a), probs(alone.label_conversation(b)))


def test_repeated_runs_are_identical() -> None:
    conv = conversation(4)
    runs = [
        probs(
            ConversationLabeler(bf16_model(), LabelingConfig(memory=FAST)).label_conversation(conv)
        )
        for _ in range(2)
    ]
    assert np.array_equal(runs[0], runs[1])


def test_labeling_throughput(record_property) -> None:
    # GPU: a 1024-wide, 8-layer backbone must label >= 5 utterances/s in dpm mode (a CPU core
    # does well under 1); CPU dry run: the tiny shape and a floor that only catches a hang
    # (bf16 matmuls on a CPU without AMX are slow, and this machine is shared).
    shape, floor = ((1024, 8, 8), 5.0) if ON_GPU else ((64, 2, 4), 0.05)
    n, lo, hi = (24, 50, 150) if ON_GPU else (6, 10, 30)
    model = bf16_model(hidden=shape[0], layers=shape[1], heads=shape[2])
    labeler = ConversationLabeler(model, LabelingConfig(mode="dpm"))
    labeler.label_conversation(conversation(5, n=4))  # warm-up: kernels, adapter creation
    conv = conversation(6, n=n, lo=lo, hi=hi)
    if ON_GPU:
        torch.cuda.synchronize()
    start = time.perf_counter()
    rows = labeler.label_conversation(conv)
    if ON_GPU:
        torch.cuda.synchronize()
    rate = len(rows) / (time.perf_counter() - start)
    record_property("utterances_per_s", round(rate, 2))
    print(f"\nlabeling throughput: {rate:.2f} utterances/s (shape {shape}, {DEVICE})")
    assert rate >= floor
