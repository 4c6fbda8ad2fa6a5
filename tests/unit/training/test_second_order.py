"""The order-2 memory loop (dpm_worker/training/second_order.py): the graph-keeping write is
the labeling step's write, its gradient reaches the backbone through the writes, truncated to M."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpm_worker.errors import ConfigError
from dpm_worker.memory import (
    BatchedLoraMemory,
    LabelingConfig,
    MemoryConfig,
    SlotLabeler,
    StepRow,
    label_batched,
)
from dpm_worker.model import EmotionModel
from dpm_worker.training import MemoryLoopConfig, MemoryLoopTrainer, TrainingConversation
from dpm_worker.training.second_order import GraphLoraMemory, TruncatedWrites, twice_differentiable
from tests.unit.training.test_memory_training import toy_conversation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def math_attention():
    """The attention kernel whose backward is differentiable (the trainer's, at order 2)."""
    with twice_differentiable():
        yield


SGD = MemoryConfig(lr=0.05, optimizer="sgd", scope="speaker", write_target="audio",
                   steps_per_utterance=2, weight_decay=0.01, warmup_steps=1)  # fmt: skip


def engine_for(memory: MemoryConfig, graph: bool, seed: int = 3) -> SlotLabeler:
    """The labeling engine on one conversation, with the graph-keeping memory or the plain one."""
    config = LabelingConfig(mode="dpm", window_tokens=32, memory=memory)
    kind = GraphLoraMemory if graph else BatchedLoraMemory
    return SlotLabeler(EmotionModel.random(seed=seed), config, 1, kind)


def rows_of(engine: SlotLabeler, conv: TrainingConversation) -> list[StepRow]:
    """The engine's step rows of every utterance (history as labeling builds it; label 0)."""
    active = engine.begin(0, conv.utterances)
    out = []
    for _ in conv.utterances:
        row, tokens = engine.next_row(0, active)
        engine.remember(active, tokens, engine.vocab.labels[0])
        active.position += 1
        out.append(row)
    return out


@pytest.mark.parametrize("write_target", ["audio", "audio+prediction", "prior"])
def test_the_graph_keeping_write_is_the_labelers_write(write_target: str) -> None:
    """Step by step, the order-2 memory's adapters and reads are the labeling engine's (1e-6)."""
    memory_cfg = replace(SGD, write_target=write_target, confidence_gate=0.0,
                         lr=0.3 if write_target == "prior" else 0.05)  # fmt: skip
    conv = toy_conversation(1, n=6)
    plain, graph = engine_for(memory_cfg, False), engine_for(memory_cfg, True)
    assert isinstance(graph.memory, GraphLoraMemory)
    graph.step.training = True
    for want_row, got_row in zip(rows_of(plain, conv), rows_of(graph, conv), strict=True):
        assert want_row == got_row
        want = plain.step.log_probs([want_row])
        got = graph.step.log_probs([got_row])
        assert got.grad_fn is not None  # the read carries the graph through the writes
        assert torch.allclose(got.detach(), want, atol=1e-6, rtol=0)
        slot = want_row.slot
        assert graph.memory.steps[slot] == plain.memory.steps[slot]  # type: ignore[union-attr]
        for a, b in zip(graph.memory.slot_state(slot), plain.memory.slot_state(slot), strict=True):  # type: ignore[union-attr]
            assert torch.allclose(a, b, atol=1e-6, rtol=0)
    moved = graph.memory.slot_state(1)[1::2]  # type: ignore[union-attr]
    assert any(float(t.abs().max()) > 0 for t in moved)  # B moved: the writes did act


def accumulated_grads(order: int, keep: int | None = None, target: str = "audio") -> torch.Tensor:
    """Backbone gradients of one conversation's read losses, no update (flattened)."""
    model = EmotionModel.random(seed=1)
    loop = MemoryLoopConfig(epochs=1, utterances_per_step=1000, plain_every=0, window_tokens=32,
                            order=order, truncate_writes=2)  # fmt: skip
    memory = replace(SGD, write_target=target, lr=0.3 if target == "prior" else 0.05)
    trainer = MemoryLoopTrainer(model, memory, loop)
    if keep is not None:
        assert trainer.chain is not None
        trainer.chain.keep = keep
    trainer.train([toy_conversation(3, n=8)], progress=False)
    grads = [p.grad for p in trainer.backbone_params]
    assert all(g is not None for g in grads)
    return torch.cat([g.flatten() for g in grads if g is not None])


@pytest.mark.parametrize("target", ["audio", "prior"])
def test_order_2_sends_gradient_through_the_writes_and_order_1_does_not(target: str) -> None:
    order1 = accumulated_grads(order=1, target=target)  # writes reach only the adapters
    adapted = accumulated_grads(order=2, keep=0, target=target)  # every write detached
    order2 = accumulated_grads(order=2, target=target)
    # Order 1 is exactly the gradient at the adapted point: nothing came through the writes.
    assert torch.allclose(order1, adapted, atol=1e-6, rtol=1e-4)
    through_writes = order2 - adapted
    assert float(through_writes.norm()) > 1e-3 * float(adapted.norm())


@pytest.mark.usefixtures("math_attention")
def test_the_gradient_flows_through_the_last_m_writes_only() -> None:
    m, n = 2, 5
    conv = toy_conversation(4, n=2 * n)
    gold = torch.tensor([1])

    def grads(engine: SlotLabeler, logits: torch.Tensor) -> torch.Tensor:
        params = [p for name, p in engine.model.model.named_parameters() if "lora_" not in name]
        g = torch.autograd.grad(F.cross_entropy(logits[None], gold), params, allow_unused=True)
        return torch.cat([(x if x is not None else torch.zeros_like(p)).flatten()
                          for x, p in zip(g, params, strict=True)])  # fmt: skip

    def graph_engine() -> tuple[SlotLabeler, list[StepRow]]:
        engine = engine_for(SGD, True, seed=5)
        engine.step.training = True
        for name, p in engine.model.model.named_parameters():
            p.requires_grad_("lora_" not in name)
        return engine, rows_of(engine, conv)[::2]  # one speaker's n turns

    def last_read(keep: int) -> torch.Tensor:
        engine, rows = graph_engine()
        chain = TruncatedWrites(engine.step, engine.memory, keep)  # type: ignore[arg-type]
        for row in rows:
            chain.before(row)
            read = engine.step.log_probs([row])[0]
            chain.after(row)
        return grads(engine, read)

    # Reference: the first n - m writes detached, the last m (this read's own included) with
    # the graph, from one running memory.
    engine, rows = graph_engine()
    memory = engine.memory
    assert isinstance(memory, GraphLoraMemory)
    for i, row in enumerate(rows):
        memory.graph = i >= n - m
        if i == n - m:  # the graph starts here: the state so far as a detached leaf
            memory.set_state(row.slot, memory.slot_state(row.slot), memory.steps[row.slot])
        read = engine.step.log_probs([row])[0]
    reference = grads(engine, read)

    truncated = last_read(m)
    assert torch.allclose(truncated, reference, atol=1e-6, rtol=1e-4)
    # Writes older than M do contribute when the window is longer: the truncation removed them.
    longer = last_read(m + 2)
    assert float((longer - truncated).norm()) > 1e-3 * float(truncated.norm())


@pytest.mark.parametrize("order", [1, 2])
def test_the_prior_memory_trains_the_backbone(order: int) -> None:
    model = EmotionModel.random(seed=2)
    before = [p.detach().clone() for p in model.model.parameters()]
    loop = MemoryLoopConfig(epochs=1, lr=1e-2, utterances_per_step=4, plain_every=0,
                            window_tokens=32, order=order)  # fmt: skip
    trainer = MemoryLoopTrainer(model, MemoryConfig(), loop)
    history = trainer.train([toy_conversation(s) for s in range(2)], progress=False)
    assert history[0]["updates"] == 5 and history[0]["L_read"] > 0
    trained = trainer.trained_model()
    after = list(trained.model.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert set(trainer.validate([toy_conversation(9)])) == {"window", "dpm"}


def test_order_2_refuses_an_adamw_write() -> None:
    memory = replace(SGD, optimizer="adamw")
    with pytest.raises(ConfigError, match="optimizer: sgd, got 'adamw'"):
        MemoryLoopTrainer(EmotionModel.random(seed=9), memory, MemoryLoopConfig(order=2))


@pytest.mark.parametrize("field, value", [("order", 3), ("truncate_writes", 0)])
def test_bad_order_settings_name_the_field(field: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"memory_loop.{field}"):
        MemoryLoopConfig(**{field: value})


@pytest.mark.parametrize(
    "target, order",
    [
        ("audio", 1),
        ("audio+prediction", 1),
        ("prior", 1),
        ("audio", 2),
        ("audio+prediction", 2),
        ("prior", 2),
    ],
)
def test_without_a_backbone_step_the_trainers_reads_are_the_labelers(target, order) -> None:
    """The memory loop labels each conversation as ``dpm`` labeling does: with the backbone
    not stepping (lr 0 in effect: more utterances per update than there are), every read it
    scores is the batched engine's read (``dpm_worker.memory.step``) of the same utterance,
    labeled 2 conversations at a time."""
    memory_cfg = replace(SGD, write_target=target, confidence_gate=0.0,
                         lr=0.3 if target == "prior" else 0.05)  # fmt: skip
    conversations = [toy_conversation(s, n=8) for s in (11, 12)]
    loop = MemoryLoopConfig(epochs=1, utterances_per_step=1000, plain_every=0, window_tokens=32,
                            order=order, truncate_writes=2, seed=0)  # fmt: skip
    trainer = MemoryLoopTrainer(EmotionModel.random(seed=3), memory_cfg, loop)
    reads: dict[str, list[torch.Tensor]] = {}
    score = trainer._score

    def captured(emotion, *args, **kwargs):  # type: ignore[no-untyped-def]
        conv = trainer._current  # set below, per conversation
        reads.setdefault(conv, []).append(torch.softmax(emotion.detach().float(), -1))
        return score(emotion, *args, **kwargs)

    conversation = trainer._conversation

    def tracked(conv, *args, **kwargs):  # type: ignore[no-untyped-def]
        trainer._current = conv.conversation_id
        return conversation(conv, *args, **kwargs)

    trainer._score = captured  # type: ignore[method-assign]
    trainer._conversation = tracked  # type: ignore[method-assign]
    trainer.train(conversations, progress=False)

    config = LabelingConfig(mode="dpm", window_tokens=32, memory=memory_cfg)
    engine = label_batched(EmotionModel.random(seed=3), config,
                           [c.utterances for c in conversations], 2)  # fmt: skip
    for conv, rows in zip(conversations, engine, strict=True):
        got = torch.stack(reads[conv.conversation_id]).numpy()
        want = np.stack([r.probs for r in rows])
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-5, (conv.conversation_id, np.abs(got - want).max())
