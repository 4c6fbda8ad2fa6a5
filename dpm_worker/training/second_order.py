"""The memory loop's writes as differentiable functions of the backbone (``memory_loop.order: 2``).

Why: at first order the adapter's values are constants to the read's loss, so the backbone
learns to read whatever its writes store but never to make a write store something useful
(docs/dpm.md). Here each speaker's temporary LoRA is held as explicit tensors and every write
is the labeler's write (:meth:`TemporaryLoraMemory.write` for ``audio``, ``audio+emotion`` and
``audio+prediction``, :meth:`TemporaryLoraMemory.write_prior` for ``prior``: the same loss, the
same k = ``steps_per_utterance`` steps, lr, warm-up and weight decay) computed functionally:
``A' = A - lr * (dL/dA + wd * A)`` with ``create_graph=True``, so ``A'`` depends on the
backbone's weights and the read's loss reaches them through the writes (as MAML, or PERK's
meta-learned test-time training). The forward passes swap the slot's LoRA weights for these
tensors with :func:`torch.func.functional_call`; the real adapter parameters stay at their
reset values and are only used by validation's labeler.

The inner optimizer is plain SGD only: its update is a closed form of the gradient, so its
derivative is one more backward pass. AdamW divides by a running second moment whose first
steps are sign-sized whatever the gradient (little for the backbone to learn from) and whose
state would have to be carried in the graph too. SGD is also the default memory's optimizer,
so the write trained here is the one labeling runs.

Truncation (``truncate_writes`` M): a slot keeps a detached base state and the inputs of its
last M writes; every read replays those writes from the base with the graph, so the read's
loss flows through the last M writes of its speaker and no further (older state is detached),
and each read's graph is self-contained (its backward runs at once; the backbone's optimizer
may step between reads). The detached state after the oldest replayed write is kept and becomes
the base when that write leaves the window. At order 1 (``prior`` only, which the first-order
trainer does not write) M is 0: every write is applied once, without a graph.
"""

from __future__ import annotations

from collections import deque
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from dpm_worker.errors import ConfigError
from dpm_worker.memory import ConversationLabeler, PreparedUtterance
from dpm_worker.model import IGNORE

State = list[torch.Tensor]


@dataclass(frozen=True)
class Write:
    """The inputs of one write: ``input_ids`` with ``labels`` (audio targets), or a prior's
    ``input_ids`` prefix (ending at the speaker token) with its ``target`` probabilities."""

    input_ids: torch.Tensor
    labels: torch.Tensor | None = None
    target: torch.Tensor | None = None


@dataclass
class _Chain:
    """One slot: detached base state, the writes after it, a kept state (see module doc)."""

    base: State
    writes: deque[Write] = field(default_factory=deque)
    base_steps: int = 0
    after_first: tuple[Write, State] | None = None


class FunctionalMemory:
    """The labeler's temporary LoRA, written functionally (module docstring).

    Args:
        labeler: the ``dpm`` labeler whose memory and write targets are mirrored.
        truncate_writes: M, how many of a speaker's latest writes the gradient flows through
            (0: none, first order).
    """

    def __init__(self, labeler: ConversationLabeler, truncate_writes: int) -> None:
        memory = labeler.memory
        if memory is None:
            raise ConfigError("the functional memory needs a dpm labeler (mode 'dpm')")
        cfg = memory.config
        if cfg.optimizer != "sgd":
            raise ConfigError(
                "the functional memory write is plain SGD (memory_loop.order 2, or the prior "
                f"memory): set memory.optimizer: sgd, got {cfg.optimizer!r}"
            )
        if truncate_writes < 0:
            raise ConfigError(f"truncate_writes must be >= 0, got {truncate_writes}")
        self.labeler, self.memory, self.config = labeler, memory, cfg
        self.lm = memory.lm
        self.keep = truncate_writes
        self.emotion_ids = list(labeler.vocab.emotion_ids)
        self._names: dict[int, list[str]] = {}
        self._chains: dict[int, _Chain] = {}

    def reset(self) -> None:
        """A new conversation: every slot back to the reset adapter, no writes kept."""
        self._chains.clear()

    # -- the labeling step ----------------------------------------------------------------------

    def read(self, step: PreparedUtterance) -> torch.Tensor:
        """One utterance in the labeler's order of write and read; its emotion logits.

        Returns:
            ``[n_labels]`` float32 logits (unnormalised log-probabilities of the emitted read)
            that carry the graph through the backbone and the slot's last M writes.
        """
        slot = self.memory.slot_for(step.speaker_slot)
        target = self.config.write_target
        if target in ("audio", "audio+emotion"):  # write, then read with the updated memory
            self._push(slot, self._audio(step))
            return self.emotion(slot, self.replay(slot), step.input_ids)
        if target == "audio+prediction":  # the read is the memory of the earlier turns
            logits = self.emotion(slot, self.replay(slot), step.input_ids)
            self._push(slot, self._audio(step))
            return logits
        return self._prior_read(slot, step)

    def _audio(self, step: PreparedUtterance) -> Write:
        return Write(step.input_ids, labels=self.labeler.write_labels(step.ids, step.start_of_utt))

    def _prior_read(self, slot: int, step: PreparedUtterance) -> torch.Tensor:
        """``prior``: the backbone's read plus beta times the speaker's prior, then the write."""
        start = step.start_of_utt
        speaker_only = self.config.prior_input == "speaker"
        prefix = step.input_ids[:, start if speaker_only else 0 : start + 1]
        own = self._backbone_at(step.input_ids, [len(step.ids) - 1])[0]
        # The prior is the adapter's change to the backbone's logits there; both terms carry
        # the graph, as labeling computes both with the same (trained) backbone.
        base = self._backbone_at(prefix, [prefix.shape[1] - 1])[0]
        state = self.replay(slot)
        logits = self._forward(slot, state, input_ids=prefix, logits_to_keep=1).logits
        prior = torch.log_softmax(logits[0, -1, self.emotion_ids].float() - base, dim=-1)
        own_log = torch.log_softmax(own, dim=-1)
        self._push(slot, Write(prefix, target=own_log.detach().exp()))
        return own_log + self.config.prior_weight * prior

    # -- writes ---------------------------------------------------------------------------------

    def write(self, slot: int, state: State, write: Write, steps: int, graph: bool) -> State:
        """The labeler's write of ``write`` into ``state`` (k SGD steps), functionally.

        Args:
            slot: the adapter slot (names the LoRA weights the state replaces).
            state: the slot's adapter tensors before the write (:meth:`initial` order).
            write: the write's inputs.
            steps: the slot's optimizer steps before this write (the warm-up position).
            graph: keep the graph (``create_graph``): the result is a differentiable function
                of ``state`` and of the backbone's weights; else detached.

        Returns:
            The adapter tensors after the write.
        """
        if write.labels is not None:
            return self._audio_write(slot, state, write, steps, graph)
        assert write.target is not None
        base = self._backbone_at(write.input_ids, [write.input_ids.shape[1] - 1])[0]
        for s in range(self.config.steps_per_utterance):
            out = self._forward(slot, state, input_ids=write.input_ids, logits_to_keep=1)
            delta = out.logits[0, -1, self.emotion_ids].float() - base
            loss = -(write.target * torch.log_softmax(delta, dim=-1)).sum()
            state = self._sgd(state, loss, steps + s, graph)
        return state

    def _audio_write(self, slot: int, state: State, write: Write, steps: int, graph: bool) -> State:
        """:meth:`TemporaryLoraMemory.write`'s loss (``audio+prediction``'s emotion term too)."""
        cfg, labels = self.config, write.labels
        assert labels is not None
        positions = torch.nonzero(labels[0] != IGNORE).flatten()
        if positions.numel() == 0 or int(positions.min()) < 1:
            raise ConfigError("a memory write needs labels at positions >= 1")
        first = int(positions.min())
        keep = int(labels.shape[1]) - first + 1
        targets = labels[:, first:].reshape(-1)
        read: torch.Tensor | None = None
        for s in range(cfg.steps_per_utterance):
            out = self._forward(slot, state, input_ids=write.input_ids, logits_to_keep=keep)
            logits = out.logits[0]
            loss = F.cross_entropy(logits[:-1].float(), targets, ignore_index=IGNORE)
            if cfg.write_target == "audio+prediction":
                emotion = logits[-1, self.emotion_ids].float()
                if read is None:  # the memory before this write: the read of step 0
                    read = torch.softmax(emotion.detach(), dim=-1)
                confidence, label = read.max(dim=-1)
                if float(confidence) >= cfg.confidence_gate:
                    loss = loss + cfg.emotion_weight * confidence * F.cross_entropy(emotion, label)
            state = self._sgd(state, loss, steps + s, graph)
        return state

    def _sgd(self, state: State, loss: torch.Tensor, step: int, graph: bool) -> State:
        """``torch.optim.SGD``'s step (no momentum), as a function of ``state``."""
        cfg = self.config
        warm = cfg.warmup_steps
        lr = cfg.lr * min(1.0, (step + 1) / (warm + 1)) if warm else cfg.lr
        grads = torch.autograd.grad(loss, state, create_graph=graph, allow_unused=True)
        new: State = []
        for a, g in zip(state, grads, strict=True):
            if g is None:  # SGD skips a parameter without a gradient (weight decay too)
                new.append(a)
                continue
            if cfg.weight_decay:
                g = g + cfg.weight_decay * a
            new.append(a - lr * g)
        return new if graph else [t.detach().requires_grad_() for t in new]

    # -- the truncated chain --------------------------------------------------------------------

    def initial(self, slot: int) -> State:
        """The slot's reset adapter tensors (detached, requiring grad for the inner step)."""
        names = self.names(slot)  # first: it may create the slot's adapter
        params = dict(self.lm.named_parameters())
        return [params[n].detach().clone().requires_grad_() for n in names]

    def names(self, slot: int) -> list[str]:
        """The LM parameter names of ``slot``'s LoRA weights, in the order of a state."""
        if slot not in self._names:
            from peft.tuners.lora import LoraLayer

            # A new slot injects an adapter, and peft then freezes every other parameter: the
            # backbone's trainable flags are put back.
            flags = [
                (p, p.requires_grad) for n, p in self.lm.named_parameters() if "lora_" not in n
            ]
            self.memory.activate(slot)
            for param, flag in flags:
                param.requires_grad_(flag)
            names: list[str] = []
            for module_name, module in self.lm.named_modules():
                if isinstance(module, LoraLayer):
                    (active,) = module.active_adapters
                    if active in module.lora_A:
                        names += [f"{module_name}.lora_{x}.{active}.weight" for x in "AB"]
            self._names[slot] = names
        return self._names[slot]

    def replay(self, slot: int) -> State:
        """The slot's adapter now: its kept writes replayed (with the graph) from its base."""
        chain = self._chain(slot)
        while len(chain.writes) > self.keep:  # the oldest leaves the window: fold it in
            oldest = chain.writes.popleft()
            if chain.after_first is not None and chain.after_first[0] is oldest:
                chain.base = chain.after_first[1]
            else:
                chain.base = self.write(slot, chain.base, oldest, chain.base_steps, graph=False)
            chain.base_steps += self.config.steps_per_utterance
            chain.after_first = None
        state = chain.base
        k = self.config.steps_per_utterance
        for i, write in enumerate(chain.writes):
            state = self.write(slot, state, write, chain.base_steps + i * k, graph=True)
            if i == 0:
                chain.after_first = (write, [t.detach().requires_grad_() for t in state])
        return state

    def _chain(self, slot: int) -> _Chain:
        if slot not in self._chains:
            self._chains[slot] = _Chain(self.initial(slot))
        return self._chains[slot]

    def _push(self, slot: int, write: Write) -> None:
        self._chain(slot).writes.append(write)

    # -- forward passes -------------------------------------------------------------------------

    def _forward(self, slot: int, state: State, **inputs: object) -> Any:
        """The LM with ``slot``'s adapter set to ``state`` (the LoRA weights swapped in)."""
        names = self.names(slot)
        self.memory.activate(slot)
        weights = dict(zip(names, state, strict=True))
        with _twice_differentiable():
            return functional_call(self.lm, weights, args=(), kwargs=inputs, strict=False)

    def emotion(self, slot: int, state: State, input_ids: torch.Tensor) -> torch.Tensor:
        """``[n_labels]`` emotion logits at the last input position with ``slot`` = ``state``."""
        out = self._forward(slot, state, input_ids=input_ids, logits_to_keep=1)
        return out.logits[0, -1, self.emotion_ids].float()

    def _backbone_at(self, input_ids: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """The backbone's emotion logits (memory off, with the graph) at ``positions``."""
        self.memory.enable(False)
        keep = torch.tensor(positions, device=input_ids.device)
        with _twice_differentiable():
            logits = self.lm(input_ids=input_ids, logits_to_keep=keep).logits[0]
        return logits[:, self.emotion_ids].float()


def _twice_differentiable() -> AbstractContextManager[None]:
    """Attention by the math kernel: the fused ones (flash, memory-efficient) have no
    derivative of their backward pass, which the gradient through a write needs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])
