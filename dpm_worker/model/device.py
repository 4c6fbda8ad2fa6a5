"""The device and dtype a backbone runs in.

The backbone may run in bf16 (the default on CUDA, or asked for on any device); the temporary
LoRA memory stays float32 whatever the backbone's dtype (``dpm_worker.memory.batched``).
"""

from __future__ import annotations

import torch

from dpm_worker.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(
    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> tuple[torch.device, torch.dtype]:
    """The run-time device and the backbone's dtype.

    Args:
        device: a torch device; None: CUDA when available, else CPU.
        dtype: a name of ``DTYPES`` or a torch dtype; None: bf16 on CUDA, float32 elsewhere.
            The temporary LoRA memory is float32 whatever this is (``dpm_worker.memory``).

    Raises:
        ConfigError: an unknown dtype name.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        return device, (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    return device, dtype
