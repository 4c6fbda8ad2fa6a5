"""Invariants of DESIGN section 5 held by the labeling engine itself (the product's labeler)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpm_worker.errors import ConfigError
from dpm_worker.memory import BatchedLoraMemory, LabelingConfig, MemoryConfig, label_batched
from dpm_worker.model import EmotionModel
from dpm_worker.utterance import Utterance

# Audio writes with a large lr, so one write visibly moves a random model (else these pass idle).
FAST = MemoryConfig(lr=1e-2, steps_per_utterance=2, scope="conversation", write_target="audio")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model() -> EmotionModel:
    return EmotionModel.random(seed=0, max_context=512)


def conversation(seed: int, n: int = 8) -> list[Utterance]:
    rng = np.random.default_rng(seed)
    return [
        Utterance(
            "c", i, "ab"[i % 2], audio_ids=rng.integers(0, 32, size=int(rng.integers(10, 30)))
        )
        for i in range(n)
    ]


def probs(rows) -> np.ndarray:
    return np.stack([r.probs for r in rows])


def test_a_fresh_or_reset_slot_is_the_backbone_exactly() -> None:
    model = make_model()
    ids = torch.randint(0, model.vocab.size, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model.model(input_ids=ids).logits
    memory = BatchedLoraMemory(model.model, FAST, 2)
    memory.use([1])
    with torch.no_grad():
        assert torch.equal(model.model(input_ids=ids).logits, base)  # B = 0
    loss = F.cross_entropy(model.model(input_ids=ids).logits[0, :-1], ids[0, 1:])
    memory.step([1], loss)
    with torch.no_grad():
        assert not torch.equal(model.model(input_ids=ids).logits, base)  # the write moved it
    memory.reset(1)
    memory.use([1])
    with torch.no_grad():
        assert torch.equal(model.model(input_ids=ids).logits, base)
    with pytest.raises(ConfigError, match="another engine's memory"):
        BatchedLoraMemory(model.model, FAST, 1)  # one memory per backbone
    memory.close()
    assert not any("lora" in name for name, _ in model.model.named_parameters())
    BatchedLoraMemory(model.model, FAST, 1).close()  # closed: the backbone is free again


@pytest.mark.parametrize("slots", [1, 3])
def test_a_conversation_after_others_equals_it_alone(slots: int) -> None:
    config = LabelingConfig(mode="dpm", memory=FAST)
    convs = [conversation(1), conversation(2), conversation(3, n=5), conversation(4)]
    together = label_batched(make_model(), config, convs, slots)
    alone = label_batched(make_model(), config, convs[-1:], 1)
    np.testing.assert_allclose(probs(together[-1]), probs(alone[0]), rtol=0, atol=1e-6)
    window = label_batched(make_model(), replace(config, mode="window"), convs[-1:], 1)
    assert np.abs(probs(alone[0]) - probs(window[0])).max() > 1e-4  # the memory mattered


def test_only_the_memory_changes_and_the_backbone_comes_back() -> None:
    model = make_model()
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    label_batched(model, LabelingConfig(mode="dpm", memory=FAST), [conversation(3)], 1)
    after = model.model.state_dict()  # label_batched closed its engine: layers put back
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_same_seed_same_rows_and_the_memory_seed_matters() -> None:
    conv = [conversation(4)]
    first = label_batched(make_model(), LabelingConfig(memory=FAST), conv, 1)[0]
    second = label_batched(make_model(), LabelingConfig(memory=FAST), conv, 1)[0]
    assert [r.emotion for r in first] == [r.emotion for r in second]
    assert np.array_equal(probs(first), probs(second))
    other = LabelingConfig(memory=replace(FAST, seed=7))
    third = label_batched(make_model(), other, conv, 1)[0]
    assert not np.array_equal(probs(first), probs(third))
