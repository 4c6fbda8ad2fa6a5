"""Where and in which precision the backbone trains: device choice, bf16 autocast, checkpointing.

On CUDA the default is bf16 autocast over fp32 weights: the matmuls run in bf16, while every
tensor the optimizer updates (the whole model from scratch; LoRA and the new embedding rows of
an extended base) stays fp32, so small updates are not rounded away. Frozen base weights are
cast to bf16 (they never receive an update), which halves their memory. On CPU the default is
plain fp32: CPU bf16 matmuls are slower than fp32 without AMX.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch

from dpm_worker.errors import ConfigError
from dpm_worker.model import EmotionModel

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda``/``cuda:N``/``cpu`` as given.

    Raises:
        ConfigError: an unknown name, or CUDA asked for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in DEVICES[1:]:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA device")
    return device


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of a run (None: plain fp32)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` on ``device`` with ``dtype``, or nothing for fp32."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def place_for_training(
    model: EmotionModel,
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    gradient_checkpointing: bool = False,
) -> EmotionModel:
    """Move ``model`` to ``device`` with fp32 trainable weights; frozen ones in ``dtype``.

    Args:
        model: the model, with ``requires_grad`` set on what trains.
        device: where it trains.
        dtype: the autocast dtype (None: everything fp32).
        gradient_checkpointing: recompute activations in the backward pass (memory for time).

    Returns:
        The same model object's fields with the model on ``device`` (``device`` updated).
    """
    lm = model.model.to(device)  # type: ignore[arg-type]  # transformers' typed .to
    for param in lm.parameters():
        wanted = torch.float32 if param.requires_grad or dtype is None else dtype
        if param.dtype != wanted:
            param.data = param.data.to(wanted)
    if gradient_checkpointing:
        # Reentrant checkpointing drops gradients when the inputs (token ids) need none.
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        lm.config.use_cache = False
    return dataclasses.replace(model, model=lm, device=device)
