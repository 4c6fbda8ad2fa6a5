"""The temporary LoRA stays float32 under a bf16 backbone (issue 12's defect), on CPU."""

from __future__ import annotations

import pytest
import torch

from dpm_worker.memory import MEMORY_DTYPE, MemoryConfig
from dpm_worker.model import EmotionModel
from tests.oracle.lora import TemporaryLoraMemory

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The paper's write: audio tokens, AdamW at lr 5e-5, 2 steps (B starts at 0, so the first step
# only moves B; the second moves A, whose entries are ~0.1: an update of ~5e-5 is below bf16's
# resolution there).
PAPER = MemoryConfig(
    write_target="audio", optimizer="adamw", lr=5e-5, steps_per_utterance=2, scope="conversation"
)


def bf16_model() -> EmotionModel:
    model = EmotionModel.random(seed=3)
    model.model.to(torch.bfloat16)
    return model


def inputs(model: EmotionModel) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, model.vocab.size, (1, 48), generator=torch.Generator().manual_seed(5))
    labels = ids.clone()
    labels[:, :24] = -100
    return ids, labels


def test_adapter_and_optimizer_state_are_fp32_and_a_small_write_lands() -> None:
    model = bf16_model()
    ids, labels = inputs(model)
    with torch.no_grad():
        base = model.model(input_ids=ids).logits
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    memory = TemporaryLoraMemory(model.model, PAPER)
    params = memory.trainable_parameters()
    assert MEMORY_DTYPE == torch.float32
    assert params and all(p.dtype == torch.float32 for p in params)
    # the backbone itself stays bf16
    frozen = [p for n, p in model.model.named_parameters() if "lora_" not in n]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    memory.activate(0)
    with torch.no_grad():
        assert torch.equal(model.model(input_ids=ids).logits, base)  # B = 0 in fp32: exact
    initial = [p.detach().clone() for p in params]

    memory.write(0, ids, labels)

    state = memory._slots[0].optimizer.state
    tensors = [t for s in state.values() for t in s.values() if torch.is_tensor(t) and t.ndim]
    assert tensors and all(t.dtype == torch.float32 for t in tensors)
    moved = [not torch.equal(p, q) for p, q in zip(params, initial, strict=True)]
    assert all(moved)  # every A and every B changed
    # The same A updates applied to bf16 weights would mostly round away (the defect).
    a_pairs = [(p, q) for p, q in zip(params[0::2], initial[0::2], strict=True)]
    lost = kept = 0
    for new, old in a_pairs:
        delta = (new - old).detach()
        in_bf16 = old.bfloat16() + delta.bfloat16()
        changed = delta != 0
        lost += int(((in_bf16 == old.bfloat16()) & changed).sum())
        kept += int(changed.sum())
    assert kept > 0 and lost / kept > 0.5  # measured: 85%

    # only adapter tensors changed
    after = {k.replace(".base_layer", ""): v for k, v in model.model.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)

    # reset restores the base outputs bitwise, memory on or off
    memory.reset()
    with torch.no_grad():
        assert torch.equal(model.model(input_ids=ids).logits, base)
        memory.activate(0)
        assert torch.equal(model.model(input_ids=ids).logits, base)
    assert all(torch.equal(p, q) for p, q in zip(params, initial, strict=True))
    assert not memory._slots[0].optimizer.state


def test_bf16_write_moves_the_read() -> None:
    """The write changes what the bf16 model computes (the sum is cast back to bf16)."""
    model = bf16_model()
    ids, labels = inputs(model)
    memory = TemporaryLoraMemory(model.model, MemoryConfig(**{**vars(PAPER), "lr": 1e-2}))
    memory.activate(0)
    with torch.no_grad():
        base = model.model(input_ids=ids).logits
    memory.write(0, ids, labels)
    with torch.no_grad():
        out = model.model(input_ids=ids).logits
    assert out.dtype == torch.bfloat16
    assert not torch.equal(out, base)
