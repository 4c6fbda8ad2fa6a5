"""Many temporary LoRAs in one backbone: stacked adapters, each row of a batch naming its slot.

The temporary LoRA of DESIGN section 5, for every conversation slot of the labeling engine at
once (its tests hold it to a reference built from peft's own LoRA layers, ``tests/oracle``).
peft's mixed-adapter batches (``adapter_names=``) are inference-only and loop over adapters, so
a small layer of our own is used: per target linear layer, ``A [S, r, in]`` and ``B [S, out, r]`` for S slots, and a
batch's rows ``x [N, T, in]`` each use the adapter of their slot ``rows[n]``::

    y[n] = base(x[n]) + scaling * x[n] @ A[rows[n]]^T @ B[rows[n]]^T

computed by :func:`lora_delta` with two batched matmuls over the gathered per-row weights (the
one function a fused kernel, e.g. a gathered BGMV, would replace). The configuration is still
``peft.LoraConfig`` (target modules matched by peft's own rule, r, alpha, scaling ``alpha/r``).

Writes train all rows' slots in one forward/backward with the loss summed over rows: each row's
loss depends only on its own slot's adapter, so the gradient a slot receives is exactly what it
would receive alone. The optimizer is per slot too: plain SGD needs no state; AdamW keeps its
moments per slot and a step count per slot (bias correction and warm-up follow each slot's own
age, because conversations start at different times); there is no global gradient-norm
clipping, which would couple slots. Only the slots of a write's rows are updated.

Why ``B = 0`` at reset: a LoRA adds ``B @ A @ x``, so with ``B = 0`` the adapted model computes
exactly the backbone's outputs; a fresh conversation starts from the backbone, bit for bit.

Precision: adapters, gradients and optimizer state are float32 whatever the backbone's dtype
(``MEMORY_DTYPE``). Under a bf16 backbone a bf16 memory has 8 bits of mantissa, so an update
smaller than about 1/256 of a weight rounds away and a write at the paper's lr 5e-5 silently does
nothing. The LoRA term is computed in float32, added to the base output and cast back to the
base dtype: the frozen backbone's arithmetic stays untouched (bit for bit when the memory is off
or reset), as peft's ``PeftModel`` does with ``autocast_adapter_dtype``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dpm_worker.errors import ConfigError
from dpm_worker.memory.config import MemoryConfig

ADAM_EPS = 1e-8  # torch.optim.AdamW's default, which the reference uses
# The temporary adapters' dtype (module docstring: "Precision").
MEMORY_DTYPE = torch.float32


def lora_delta(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, scaling: float
) -> torch.Tensor:
    """``scaling * x[n] @ a[rows[n]]^T @ b[rows[n]]^T`` for every row n, in ``a``'s dtype.

    Args:
        x: ``[N, T, in]`` the layer's input.
        a: ``[S, r, in]`` stacked A matrices.
        b: ``[S, out, r]`` stacked B matrices.
        rows: ``[N]`` int64, the slot of each row.
        scaling: LoRA's ``alpha / r``.
    """
    return lora_product(x, a[rows], b[rows], scaling)


def lora_product(
    x: torch.Tensor, a_rows: torch.Tensor, b_rows: torch.Tensor, scaling: float
) -> torch.Tensor:
    """``scaling * x[n] @ a_rows[n]^T @ b_rows[n]^T``: the LoRA term with per-row weights
    already gathered (``a_rows [N, r, in]``, ``b_rows [N, out, r]``)."""
    h = torch.bmm(x.to(a_rows.dtype), a_rows.transpose(1, 2))
    return torch.bmm(h, b_rows.transpose(1, 2)) * scaling


class BatchedLoraLinear(nn.Module):
    """A frozen ``nn.Linear`` plus S stacked LoRA adapters, one per slot.

    Args:
        base: the wrapped layer (left as it is).
        n_slots: S.
        rank: r.
        scaling: ``alpha / r``.
    """

    def __init__(self, base: nn.Linear, n_slots: int, rank: int, scaling: float) -> None:
        super().__init__()
        self.base_layer = base
        device = base.weight.device
        # Trained through the gathered per-row copies (a_rows, b_rows), so no gradient here.
        self.lora_A = nn.Parameter(
            torch.zeros(n_slots, rank, base.in_features, dtype=MEMORY_DTYPE, device=device),
            requires_grad=False,
        )
        self.lora_B = nn.Parameter(
            torch.zeros(n_slots, base.out_features, rank, dtype=MEMORY_DTYPE, device=device),
            requires_grad=False,
        )
        self.scaling = scaling
        # The adapters of the next forward passes' rows, gathered once per memory update by
        # BatchedLoraMemory.use (leaves whose gradients are the rows' own, so a backward never
        # builds a gradient the size of all S slots); None: memory off (the backbone).
        self.a_rows: torch.Tensor | None = None
        self.b_rows: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.a_rows is None or self.b_rows is None:
            return result
        delta = lora_product(x, self.a_rows, self.b_rows, self.scaling)
        return (result + delta).to(result.dtype)


class BatchedLoraMemory:
    """S temporary LoRA adapters in one frozen causal LM, trained and read a batch row per slot.

    Slots are numbered by the caller (e.g. conversation slot x speaker); ``reset(slot, key)``
    gives slot ``slot`` the initial adapter of the reference memory's slot ``key`` (the same
    seeded A, B = 0), so a conversation run here starts exactly where it would alone.

    Args:
        lm: the backbone (a transformers causal LM); its target linear layers are wrapped in
            place and its own parameters frozen. Must not carry peft adapters.
        config: the memory's hyperparameters (shared by all slots).
        n_slots: S, the number of adapters.
    """

    def __init__(self, lm: nn.Module, config: MemoryConfig, n_slots: int) -> None:
        from peft import LoraConfig
        from peft.tuners.tuners_utils import check_target_module_exists

        if n_slots < 1:
            raise ConfigError(f"a batched memory needs n_slots >= 1, got {n_slots}")
        if any(isinstance(m, BatchedLoraLinear) for m in lm.modules()):
            raise ConfigError(
                "the backbone carries another engine's memory already: close() that engine "
                "first, or give this one its own copy of the model"
            )
        self.lm, self.config, self.n_slots = lm, config, n_slots
        lora = LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,  # type: ignore[arg-type]  # peft accepts float alphas
            target_modules=list(config.target_modules),
            lora_dropout=0.0,
            bias="none",
        )
        for param in lm.parameters():
            param.requires_grad_(False)
        lm.train(False)
        targets = [
            (name, module)
            for name, module in lm.named_modules()
            if isinstance(module, nn.Linear) and check_target_module_exists(lora, name)
        ]
        if not targets:
            raise ConfigError(
                f"memory.target_modules {config.target_modules} matched no layer of the backbone"
            )
        self.layers: list[BatchedLoraLinear] = []
        for name, module in targets:
            parent_name, _, child = name.rpartition(".")
            parent = lm.get_submodule(parent_name) if parent_name else lm
            layer = BatchedLoraLinear(module, n_slots, config.rank, config.alpha / config.rank)
            setattr(parent, child, layer)
            self.layers.append(layer)
        self._targets = targets
        self.params: list[nn.Parameter] = [p for m in self.layers for p in (m.lora_A, m.lora_B)]
        self.steps = [0] * n_slots
        self._moments: list[tuple[torch.Tensor, torch.Tensor]] = (
            [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]
            if config.optimizer == "adamw"
            else []
        )
        self._init_cache: dict[int, list[torch.Tensor]] = {}
        # the rows of the last use() and whether their gathered adapters are current
        self._used: tuple[int, ...] | None = None
        self._fresh = False
        for slot in range(n_slots):
            self.reset(slot)
        self.use(None)

    # -- lifecycle ------------------------------------------------------------------------------

    def reset(self, slot: int, key: int = 0) -> None:
        """Slot ``slot`` back to its initial adapter (the reference's slot ``key``), state cleared.

        Other slots are untouched, so one conversation can start while the others go on.
        """
        self._check(slot)
        init = self._init_cache.get(key)
        if init is None:
            init = self._initial_a(key)
            self._init_cache[key] = init
        with torch.no_grad():
            for layer, a in zip(self.layers, init, strict=True):
                layer.lora_A[slot].copy_(a)
                layer.lora_B[slot].zero_()
            for m, v in self._moments:
                m[slot].zero_()
                v[slot].zero_()
        self.steps[slot] = 0
        if self._used is not None and slot in self._used:
            self._fresh = False
            self.use(self._used)

    def use(self, rows: Sequence[int] | None) -> None:
        """The slots of the next passes' batch rows, in order; None switches the memory off.

        Gathers each layer's per-row adapters once (again only after a step or a reset), as
        leaves that collect the rows' gradients for :meth:`step`.
        """
        key = None if rows is None else tuple(rows)
        if key == self._used and self._fresh:
            return
        if key is not None:
            for slot in key:
                self._check(slot)
            index = torch.tensor(key, dtype=torch.long, device=self.params[0].device)
        for layer in self.layers:
            if key is None:
                layer.a_rows = layer.b_rows = None
            else:
                layer.a_rows = layer.lora_A.detach()[index].requires_grad_(True)
                layer.b_rows = layer.lora_B.detach()[index].requires_grad_(True)
        self._used, self._fresh = key, True

    def close(self) -> None:
        """Put the wrapped linear layers back (the backbone is then as loaded)."""
        for (name, module), _layer in zip(self._targets, self.layers, strict=True):
            parent_name, _, child = name.rpartition(".")
            parent = self.lm.get_submodule(parent_name) if parent_name else self.lm
            setattr(parent, child, module)
        self.layers, self.params, self._moments = [], [], []

    def slot_state(self, slot: int) -> list[torch.Tensor]:
        """Copies of slot ``slot``'s A and B of every layer (in the reference's order)."""
        return [t[slot].detach().clone() for t in self.params]

    def export_slot(self, slot: int) -> dict[str, torch.Tensor]:
        """Slot ``slot``'s state as named tensors (checkpoints, ``ConversationState``).

        Keys: ``param.<i>`` (A and B of every layer in turn), ``opt.<i>.<name>`` (AdamW's
        ``step``, ``exp_avg``, ``exp_avg_sq``) and ``steps``; detached CPU copies (the keys the
        reference memory in ``tests/oracle`` uses per slot, so each can resume the other's).
        """
        self._check(slot)
        out = {"steps": torch.tensor(self.steps[slot], dtype=torch.int64)}
        for i, p in enumerate(self.params):
            out[f"param.{i}"] = p[slot].detach().cpu().clone()
        for i, (m, v) in enumerate(self._moments):
            out[f"opt.{i}.step"] = torch.tensor(float(self.steps[slot]), dtype=torch.float32)
            out[f"opt.{i}.exp_avg"] = m[slot].detach().cpu().clone()
            out[f"opt.{i}.exp_avg_sq"] = v[slot].detach().cpu().clone()
        return out

    def import_slot(self, slot: int, fields: dict[str, torch.Tensor]) -> None:
        """Make slot ``slot`` the one :meth:`export_slot` (or the reference) described.

        Raises:
            ConfigError: a tensor is missing or its shape does not fit this memory.
        """
        self._check(slot)
        with torch.no_grad():
            for i, p in enumerate(self.params):
                saved = fields.get(f"param.{i}")
                if saved is None or saved.shape != p.shape[1:]:
                    raise ConfigError(
                        f"memory state param {i}: expected shape {tuple(p.shape[1:])}, got "
                        f"{None if saved is None else tuple(saved.shape)}"
                    )
                p[slot].copy_(saved.to(device=p.device, dtype=p.dtype))
            for i, (m, v) in enumerate(self._moments):
                m[slot].zero_()
                v[slot].zero_()
                if f"opt.{i}.exp_avg" in fields:
                    m[slot].copy_(fields[f"opt.{i}.exp_avg"].to(device=m.device, dtype=m.dtype))
                    v[slot].copy_(fields[f"opt.{i}.exp_avg_sq"].to(device=v.device, dtype=v.dtype))
        self.steps[slot] = int(fields["steps"]) if "steps" in fields else 0

    # -- optimizer ------------------------------------------------------------------------------

    def step(self, rows: Sequence[int], loss: torch.Tensor, retain_graph: bool = False) -> None:
        """One optimizer step of the slots ``rows`` on ``loss`` (a sum of per-row losses).

        ``rows`` must be those of the last :meth:`use` (the passes ``loss`` comes from), each
        slot once. Each slot's lr follows its own warm-up; slots not in ``rows`` do not move.
        Only the adapters get gradients (a backbone that requires them, in the memory-loop
        trainer, gets none from a write); ``retain_graph`` keeps the passes' graph for a read
        taken from them.
        """
        cfg = self.config
        key = self._check_step(rows)
        gathered = self._gathered()
        found = torch.autograd.grad(loss, gathered, retain_graph=retain_graph, allow_unused=True)
        grads = [
            torch.zeros_like(t) if g is None else g for g, t in zip(found, gathered, strict=True)
        ]
        slots = torch.tensor(key, dtype=torch.long, device=self.params[0].device)
        lrs = [self._lr(self.steps[s]) for s in key]
        with torch.no_grad():
            if cfg.optimizer == "sgd":
                self._sgd(gathered, grads, slots, lrs)
            else:
                counts = [self.steps[s] + 1 for s in key]
                moments = self._moments
                for p, w, g, (m, v) in zip(self.params, gathered, grads, moments, strict=True):
                    self._adamw(p, w, g, m, v, slots, lrs, counts)
        for s in key:
            self.steps[s] += 1
        self._fresh = False
        self.use(key)

    def _gathered(self) -> list[torch.Tensor]:
        """The per-row adapters of the last :meth:`use`, layer by layer (A, B)."""
        out = [t for layer in self.layers for t in (layer.a_rows, layer.b_rows)]
        if any(t is None for t in out):
            raise ConfigError("a memory step needs the rows of a use(), not the memory off")
        return out  # type: ignore[return-value]

    def _check_step(self, rows: Sequence[int]) -> tuple[int, ...]:
        key = tuple(rows)
        if key != self._used or len(set(key)) != len(key):
            raise ConfigError(f"step rows {key} must be the last use()'s {self._used}, distinct")
        return key

    def _sgd(
        self,
        gathered: list[torch.Tensor],
        grads: list[torch.Tensor],
        slots: torch.Tensor,
        lrs: list[float],
    ) -> None:
        # torch.optim.SGD without momentum: p -= lr * (g + wd * p), only the rows' slots
        wd = self.config.weight_decay
        if wd:
            grads = list(torch._foreach_add(grads, gathered, alpha=wd))
        if len(set(lrs)) == 1:
            for p, g in zip(self.params, grads, strict=True):
                p.index_add_(0, slots, g, alpha=-lrs[0])
            return
        lr = _per_row(lrs, grads[0])
        for p, g in zip(self.params, grads, strict=True):
            p.index_add_(0, slots, g * -lr)

    def _adamw(
        self,
        p: nn.Parameter,
        weights: torch.Tensor,
        grad: torch.Tensor,
        m: torch.Tensor,
        v: torch.Tensor,
        slots: torch.Tensor,
        lrs: list[float],
        counts: list[int],
    ) -> None:
        # torch.optim.AdamW, one bias correction per slot (its own step count)
        b1, b2 = self.config.betas
        weights = weights.detach()
        lr = _per_row(lrs, weights)
        weights = weights * (1 - lr * self.config.weight_decay)
        m_s = m[slots].lerp(grad, 1 - b1)
        v_s = v[slots].mul(b2).addcmul(grad, grad, value=1 - b2)
        c1 = _per_row([1 - b1**n for n in counts], weights)
        c2 = _per_row([math.sqrt(1 - b2**n) for n in counts], weights)
        denom = (v_s.sqrt() / c2).add(ADAM_EPS)
        p.index_copy_(0, slots, weights - (lr / c1) * m_s / denom)
        m.index_copy_(0, slots, m_s)
        v.index_copy_(0, slots, v_s)

    def _lr(self, step: int) -> float:
        warm = self.config.warmup_steps
        return self.config.lr * min(1.0, (step + 1) / (warm + 1)) if warm else self.config.lr

    # -- internals ------------------------------------------------------------------------------

    def _initial_a(self, key: int) -> list[torch.Tensor]:
        """The reference's seeded A matrices of its slot ``key``, layer by layer (same draws)."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + key)
        out = []
        for layer in self.layers:
            shape = layer.lora_A.shape[1:]
            bound = 1.0 / math.sqrt(shape[1])
            out.append(torch.empty(shape).uniform_(-bound, bound, generator=generator))
        return out

    def _check(self, slot: int) -> None:
        if not 0 <= slot < self.n_slots:
            raise ConfigError(f"memory slot {slot} is outside 0..{self.n_slots - 1}")


def _per_row(values: list[float], like: torch.Tensor) -> Any:
    """``values`` as a ``[N, 1, 1]`` tensor that broadcasts over ``[N, a, b]`` slot tensors."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1)
