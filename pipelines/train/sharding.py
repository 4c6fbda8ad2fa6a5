"""Data parallelism of a Ray Train worker's causal LM: DDP, or FSDP2 for ``strategy: fsdp``.

FSDP uses torch's FSDP2 (``torch.distributed.fsdp.fully_shard``): each decoder layer and then
the whole LM are sharded over the workers, so weights, gradients and optimizer states are
split N ways. It is applied here and not through ``ray.train.torch.prepare_model``, which
refuses FSDP without CUDA; FSDP2 trains on CPU with gloo, which is how it is tested.

Checkpoints hold full (unsharded) tensors whatever the strategy: every worker takes part in
gathering them (``torch.distributed.checkpoint.state_dict``) and rank 0 writes them, so a
checkpoint is an ordinary model folder and resumes under either strategy.
"""

from __future__ import annotations

from typing import Any

import torch


def wrap_model(lm: torch.nn.Module, strategy: str) -> torch.nn.Module:
    """``lm`` wrapped for data parallelism across the initialized process group."""
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # One FSDP unit per decoder layer (gathered just in time for its forward/backward),
        # then the root for the embeddings and head.
        layer_types = set(getattr(lm, "_no_split_modules", None) or ())
        for module in list(lm.modules()):
            if type(module).__name__ in layer_types:
                fully_shard(module)
        fully_shard(lm)
        return lm
    import ray.train.torch

    return ray.train.torch.prepare_model(lm, parallel_strategy=strategy)


def full_model_state(lm: torch.nn.Module) -> dict[str, Any]:
    """The LM's full state dict on CPU on rank 0 (empty elsewhere); a collective call."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(lm, options=options)


def full_optimizer_state(lm: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The LM optimizer's full state on CPU on rank 0 (empty elsewhere); a collective call."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(lm, optimizer, options=options)


def load_optimizer_state(
    lm: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a full optimizer state (as :func:`full_optimizer_state` gave it) on every rank."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(
        lm, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True)
    )


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` over sharded (DTensor) and plain gradients together.

    A sharded gradient's norm is reduced over the workers (``full_tensor``), so every worker
    scales by the norm of the whole gradient, as DDP's clipping does.
    """
    norms = []
    for param in params:
        if param.grad is None:
            continue
        norm = torch.linalg.vector_norm(param.grad)
        full = getattr(norm, "full_tensor", None)  # a DTensor's norm is a partial sum
        norms.append(full() if full is not None else norm)
    if not norms:
        return
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for param in params:
        if param.grad is not None:
            param.grad.mul_(scale)
