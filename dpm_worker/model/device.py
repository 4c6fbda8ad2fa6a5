"""The run-time device and the backbone's dtype of a loaded model."""

from __future__ import annotations

import torch

from dpm_worker.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(
    device: str | torch.device | None = None, dtype: str | None = None
) -> tuple[torch.device, torch.dtype]:
    """The run-time device and the backbone's dtype.

    Args:
        device: a torch device (None: CUDA when available, else CPU).
        dtype: ``float32``, ``bfloat16`` or ``float16`` (None: bf16 on CUDA, else float32).

    Raises:
        ConfigError: an unknown dtype name.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        return device, (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return device, DTYPES[dtype]
