"""The order-2 memory loop (dpm_worker/training/second_order.py): the functional write is the
labeler's write, its gradient reaches the backbone through the writes, truncated to M."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpm_worker.errors import ConfigError
from dpm_worker.memory import ConversationLabeler, LabelingConfig, MemoryConfig, label_batched
from dpm_worker.model import EmotionModel
from dpm_worker.training import MemoryLoopConfig, MemoryLoopTrainer, TrainingConversation
from dpm_worker.training.second_order import FunctionalMemory, Write
from tests.unit.training.test_memory_training import toy_conversation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SGD = MemoryConfig(lr=0.05, optimizer="sgd", scope="speaker", write_target="audio",
                   steps_per_utterance=2, weight_decay=0.01, warmup_steps=1)  # fmt: skip


def labeler_for(memory: MemoryConfig, seed: int = 3) -> ConversationLabeler:
    model = EmotionModel.random(seed=seed)
    return ConversationLabeler(model, LabelingConfig(mode="dpm", window_tokens=32, memory=memory))


def prepared(labeler: ConversationLabeler, conv: TrainingConversation):
    """The labeler's prepared inputs of every utterance (history as labeling builds it)."""
    slots: dict[str, int] = {}
    history: list[int] = []
    out = []
    for utt in conv.utterances:
        step = labeler.prepare(utt, slots, history)
        labeler.remember(history, step.tokens, labeler.vocab.labels[0])
        out.append(step)
    return out


@pytest.mark.parametrize("write_target", ["audio", "audio+prediction", "prior"])
def test_the_functional_write_is_the_labelers_write(write_target: str) -> None:
    """Two writes from the reset adapter: the same adapter as the labeler's memory (1e-6)."""
    memory_cfg = replace(SGD, write_target=write_target, confidence_gate=0.0,
                         lr=0.3 if write_target == "prior" else 0.05)  # fmt: skip
    labeler = labeler_for(memory_cfg)
    memory = labeler.memory
    assert memory is not None
    functional = FunctionalMemory(labeler, truncate_writes=2)
    steps = prepared(labeler, toy_conversation(1, n=4))[::2]  # speaker "a"'s turns
    memory.reset()
    slot = memory.slot_for(steps[0].speaker_slot)
    state = functional.initial(slot)
    k = memory_cfg.steps_per_utterance
    emotion_ids = list(labeler.vocab.emotion_ids)
    for n, step in enumerate(steps):
        if write_target == "prior":
            prefix = step.input_ids[:, step.start_of_utt : step.start_of_utt + 1]
            memory.enable(False)
            with torch.no_grad():
                base = labeler.model.model(input_ids=prefix).logits[0, -1, emotion_ids].float()
            target = torch.softmax(torch.randn(len(emotion_ids), generator=torch.Generator().manual_seed(n)), -1)  # fmt: skip
            memory.write_prior(slot, prefix, base, target, emotion_ids)
            write = Write(prefix, target=target)
        else:
            labels = labeler.write_labels(step.ids, step.start_of_utt)
            memory.write(slot, step.input_ids, labels, emotion_ids)
            write = Write(step.input_ids, labels=labels)
        state = functional.write(slot, state, write, steps=n * k, graph=True)
        real = dict(labeler.model.model.named_parameters())
        for name, value in zip(functional.names(slot), state, strict=True):
            assert torch.allclose(value, real[name], atol=1e-6, rtol=0), name
    assert any(
        float(t.detach().abs().max()) > 0 for t in state[1::2]
    )  # B moved: the writes did act


def accumulated_grads(order: int, keep: int | None = None, target: str = "audio") -> torch.Tensor:
    """Backbone gradients of one conversation's read losses, no update (flattened)."""
    model = EmotionModel.random(seed=1)
    loop = MemoryLoopConfig(epochs=1, utterances_per_step=1000, plain_every=0, window_tokens=32,
                            order=order, truncate_writes=2)  # fmt: skip
    trainer = MemoryLoopTrainer(model, replace(SGD, write_target=target), loop)
    if keep is not None:
        assert trainer.functional is not None
        trainer.functional.keep = keep
    trainer.train([toy_conversation(3, n=8)], progress=False)
    grads = [p.grad for p in trainer.backbone_params]
    assert all(g is not None for g in grads)
    return torch.cat([g.flatten() for g in grads if g is not None])


def test_order_2_sends_gradient_through_the_writes_and_order_1_does_not() -> None:
    order1 = accumulated_grads(order=1)  # the labeler's writes, backbone frozen while writing
    adapted = accumulated_grads(order=2, keep=0)  # functional writes, every one detached
    order2 = accumulated_grads(order=2)
    # Order 1 is exactly the gradient at the adapted point: nothing came through the writes.
    assert torch.allclose(order1, adapted, atol=1e-6, rtol=1e-4)
    through_writes = order2 - adapted
    assert float(through_writes.norm()) > 1e-3 * float(adapted.norm())


def test_the_gradient_flows_through_the_last_m_writes_only() -> None:
    m, n = 2, 5
    labeler = labeler_for(SGD, seed=5)
    steps = prepared(labeler, toy_conversation(4, n=2 * n))[::2]  # one speaker's n turns
    params = [p for name, p in labeler.model.model.named_parameters() if "lora_" not in name]
    for p in params:
        p.requires_grad_(True)
    gold = torch.tensor([1])

    def grads(logits: torch.Tensor) -> torch.Tensor:
        g = torch.autograd.grad(F.cross_entropy(logits[None], gold), params, allow_unused=True)
        return torch.cat([(x if x is not None else torch.zeros_like(p)).flatten()
                          for x, p in zip(g, params, strict=True)])  # fmt: skip

    def last_read(keep: int) -> torch.Tensor:
        functional = FunctionalMemory(labeler, keep)
        return grads([functional.read(s) for s in steps][-1])

    # Reference: the state after the first n - m writes, detached; the last m with the graph.
    detached = FunctionalMemory(labeler, 0)
    for step in steps[: n - m]:
        detached.read(step)
    slot = labeler.memory.slot_for(steps[0].speaker_slot)  # type: ignore[union-attr]
    state = detached.replay(slot)
    assert all(t.grad_fn is None for t in state)
    k = SGD.steps_per_utterance
    for i, step in enumerate(steps[n - m :]):
        write = Write(step.input_ids, labels=labeler.write_labels(step.ids, step.start_of_utt))
        state = detached.write(slot, state, write, steps=(n - m + i) * k, graph=True)
    reference = grads(detached.emotion(slot, state, steps[-1].input_ids))

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
    [("audio", 1), ("audio+prediction", 1), ("prior", 1), ("audio", 2), ("prior", 2)],
)
def test_without_a_backbone_step_the_trainers_reads_are_the_labelers(target, order) -> None:
    """The memory loop labels each conversation as ``dpm`` labeling does: with the backbone
    not stepping (lr 0 in effect: more utterances per update than there are), every read it
    scores is the batched engine's read (``dpm_worker.memory.step``) of the same utterance."""
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
