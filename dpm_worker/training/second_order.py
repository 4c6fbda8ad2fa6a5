"""The memory loop's writes as differentiable functions of the backbone (``memory_loop.order: 2``).

Why: at first order the adapter's values are constants to the read's loss, so the backbone
learns to read whatever its writes store but never to make a write store something useful
(docs/dpm.md). Here the writes are the labeling step's own writes (the strategies of
:mod:`dpm_worker.memory.step`, the same loss, the same k = ``steps_per_utterance`` steps, lr,
warm-up and weight decay), run on :class:`GraphLoraMemory`: the batched memory whose SGD step is
``A' = A - lr * (dL/dA + wd * A)`` taken with ``create_graph=True``, so ``A'`` depends on the
backbone's weights and the read's loss reaches them through the writes (as MAML, or PERK's
meta-learned test-time training).

The inner optimizer is plain SGD only: its update is a closed form of the gradient, so its
derivative is one more backward pass. AdamW divides by a running second moment whose first
steps are sign-sized whatever the gradient (little for the backbone to learn from) and whose
state would have to be carried in the graph too. SGD is also the default memory's optimizer,
so the write trained here is the one labeling runs.

Truncation (``truncate_writes`` M, :class:`TruncatedWrites`): a slot keeps a detached base state
and the rows of its latest writes; before every step the memory is set to the base and those
writes are replayed with the graph (:meth:`Step.rewrite`), so the read's loss flows through the
speaker's last M writes and no further (older state is detached), and each read's graph is
self-contained (its backward runs at once; the backbone's optimizer may step between reads).
The detached state after the oldest replayed write is kept and becomes the base when that write
leaves the window, so a write's detached result is taken from its first replay, not recomputed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import nn

from dpm_worker.errors import ConfigError
from dpm_worker.memory import BatchedLoraMemory, MemoryConfig, StepRow
from dpm_worker.memory.step import AudioWrite, Step

State = list[torch.Tensor]


class GraphLoraMemory(BatchedLoraMemory):
    """The batched memory whose writes keep the graph: each slot's adapter is a list of
    tensors (``states[slot]``, in ``params`` order) that an SGD step replaces by a
    differentiable function of the old ones, of the loss's inputs and of the backbone.

    ``graph`` False: the same steps, detached (the truncated chain's folds). The ``lora_A`` /
    ``lora_B`` stacks only hold each slot's initial adapter.
    """

    def __init__(self, lm: nn.Module, config: MemoryConfig, n_slots: int) -> None:
        if config.optimizer != "sgd":
            raise ConfigError(
                "the memory-loop order 2 write is plain SGD (dpm_worker/training/second_order.py): "
                f"set memory.optimizer: sgd, got {config.optimizer!r}"
            )
        self.graph = True
        self.states: dict[int, State] = {}
        super().__init__(lm, config, n_slots)

    def reset(self, slot: int, key: int = 0) -> None:
        self.states.pop(slot, None)  # rebuilt from the reset stacks by _state
        super().reset(slot, key)

    def use(self, rows: Sequence[int] | None) -> None:
        key = None if rows is None else tuple(rows)
        for i, layer in enumerate(self.layers):
            if key is None:
                layer.a_rows = layer.b_rows = None
            else:
                layer.a_rows = torch.stack([self._state(s)[2 * i] for s in key])
                layer.b_rows = torch.stack([self._state(s)[2 * i + 1] for s in key])
        self._used, self._fresh = key, True

    def step(self, rows: Sequence[int], loss: torch.Tensor, retain_graph: bool = False) -> None:
        """:meth:`BatchedLoraMemory.step` with SGD, as a function (module docstring)."""
        key = self._check_step(rows)
        inputs = [t for s in key for t in self._state(s)]
        grads = torch.autograd.grad(
            loss,
            inputs,
            create_graph=self.graph,
            retain_graph=retain_graph or self.graph,
            allow_unused=True,
        )
        n, wd = len(self.params), self.config.weight_decay
        for j, slot in enumerate(key):
            lr = self._lr(self.steps[slot])
            new = []
            for a, g in zip(inputs[j * n : (j + 1) * n], grads[j * n : (j + 1) * n], strict=True):
                g = torch.zeros_like(a) if g is None else g  # as the batched memory's step
                new.append(a - lr * (g + wd * a) if wd else a - lr * g)
            self.states[slot] = new if self.graph else [t.detach().requires_grad_() for t in new]
            self.steps[slot] += 1
        self.use(key)

    def slot_state(self, slot: int) -> list[torch.Tensor]:
        return [t.detach().clone() for t in self._state(slot)]

    def set_state(self, slot: int, state: State, steps: int) -> None:
        """Slot ``slot``'s adapter becomes ``state`` after ``steps`` optimizer steps (detached
        tensors are made leaves that require grad, for the next step's gradient)."""
        self.states[slot] = [t if t.requires_grad else t.requires_grad_() for t in state]
        self.steps[slot] = steps

    def _state(self, slot: int) -> State:
        state = self.states.get(slot)
        if state is None:  # a reset slot: its initial adapter, from the stacks
            state = [p[slot].detach().clone().requires_grad_() for p in self.params]
            self.states[slot] = state
        return state


@dataclass(frozen=True)
class Write:
    """One past step's write: its row, and what it wrote toward (``Step.written``)."""

    row: StepRow
    targets: torch.Tensor | None


@dataclass
class _Chain:
    """One slot: detached base state, the writes after it, a kept state (module docstring)."""

    base: State
    base_steps: int = 0
    writes: deque[Write] = field(default_factory=deque)
    after_first: tuple[Write, State] | None = None


class TruncatedWrites:
    """The order-2 truncation: each slot's memory before a step is its last M writes replayed,
    with the graph, from a detached base (module docstring).

    Args:
        step: the labeling step (its strategy's :meth:`Step.rewrite` replays a write).
        memory: the step's memory.
        truncate_writes: M (0: every write detached, the first-order gradient).
    """

    def __init__(self, step: Step, memory: GraphLoraMemory, truncate_writes: int) -> None:
        if truncate_writes < 0:
            raise ConfigError(f"truncate_writes must be >= 0, got {truncate_writes}")
        self.step, self.memory, self.keep = step, memory, truncate_writes
        # ``audio``/``audio+emotion`` write, then read: the step's own write is the last of M
        self.writes_first = (
            isinstance(step, AudioWrite) and memory.config.write_target != "audio+prediction"
        )
        self._chains: dict[int, _Chain] = {}

    def reset(self) -> None:
        """A new conversation: no writes kept."""
        self._chains.clear()

    def before(self, row: StepRow) -> None:
        """Set ``row``'s slot to its base plus its kept writes, replayed with the graph."""
        memory, slot = self.memory, row.slot
        chain = self._chains.get(slot)
        if chain is None:  # the slot's first step in this conversation: its reset adapter
            chain = self._chains[slot] = _Chain(memory.slot_state(slot), memory.steps[slot])
        room = max(0, self.keep - 1) if self.writes_first else self.keep
        k = memory.config.steps_per_utterance
        while len(chain.writes) > room:  # the oldest leaves the window: fold it in
            oldest = chain.writes.popleft()
            if chain.after_first is not None and chain.after_first[0] is oldest:
                chain.base = chain.after_first[1]
            else:
                chain.base = self._fold(slot, chain.base, chain.base_steps, oldest)
            chain.base_steps += k
            chain.after_first = None
        memory.graph = self.keep > 0
        memory.set_state(slot, chain.base, chain.base_steps)
        for i, write in enumerate(chain.writes):
            self.step.rewrite([write.row], write.targets)
            if i == 0:
                chain.after_first = (write, memory.slot_state(slot))

    def after(self, row: StepRow) -> None:
        """The step on ``row`` ran: its write joins the slot's window."""
        chain = self._chains[row.slot]
        write = Write(row, self.step.written)
        if self.keep == 0:  # nothing replayed: the step's own (detached) result is the base
            chain.base = self.memory.slot_state(row.slot)
            chain.base_steps = self.memory.steps[row.slot]
            return
        chain.writes.append(write)

    def _fold(self, slot: int, state: State, steps: int, write: Write) -> State:
        """``write`` applied to ``state`` without the graph."""
        memory = self.memory
        memory.graph = False
        memory.set_state(slot, state, steps)
        self.step.rewrite([write.row], write.targets)
        return memory.states[slot]


def twice_differentiable() -> AbstractContextManager[None]:
    """Attention by the math kernel: the fused ones (flash, memory-efficient) have no
    derivative of their backward pass, which the gradient through a write needs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])
