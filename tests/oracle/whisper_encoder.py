"""A plain float32 torch reference of Whisper's encoder, read straight from CTranslate2's
``model.bin`` (the format of ``ctranslate2/specs/model_spec.py``: a version, the spec's name
and revision, then named tensors, then aliases). The product runs the encoder through
CTranslate2 (int8 on CPU); tests hold its states against this reference on real audio."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch

# CTranslate2's dtype ids (model_spec._dtype_to_type_id)
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_model_bin(path: Path, prefix: str = "encoder/") -> dict[str, torch.Tensor]:
    """The float tensors of ``model.bin`` whose names start with ``prefix``, as float32."""
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:

        def string() -> str:
            (n,) = struct.unpack("H", f.read(2))
            return f.read(n)[:-1].decode()

        struct.unpack("I", f.read(4))
        string()
        struct.unpack("I", f.read(4))
        (count,) = struct.unpack("I", f.read(4))
        for _ in range(count):
            name = string()
            (rank,) = struct.unpack("B", f.read(1))
            shape = struct.unpack(f"{rank}I", f.read(4 * rank))
            (dtype,) = struct.unpack("B", f.read(1))
            (nbytes,) = struct.unpack("I", f.read(4))
            raw = f.read(nbytes)
            if name.startswith(prefix) and dtype in DTYPES:
                array = np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(shape)
                out[name[len(prefix) :]] = torch.from_numpy(array.astype(np.float32))
    return out


def _norm(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, x.shape[-1:], w[f"{name}/gamma"], w[f"{name}/beta"])


def _linear(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return torch.nn.functional.linear(x, w[f"{name}/weight"], w.get(f"{name}/bias"))


@torch.no_grad()
def reference_states(weights: dict[str, torch.Tensor], mel: np.ndarray, heads: int) -> np.ndarray:
    """Whisper's encoder on one unpadded log-mel ``[n_mels, T]`` -> ``[T // 2, width]``."""
    x = torch.from_numpy(mel)[None]
    x = torch.nn.functional.gelu(
        torch.nn.functional.conv1d(x, weights["conv1/weight"], weights["conv1/bias"], padding=1)
    )
    x = torch.nn.functional.gelu(
        torch.nn.functional.conv1d(
            x, weights["conv2/weight"], weights["conv2/bias"], stride=2, padding=1
        )
    )
    x = x.transpose(1, 2)[0]
    x = x + weights["position_encodings/encodings"][: x.shape[0]]
    layer = 0
    while f"layer_{layer}/self_attention/layer_norm/gamma" in weights:
        p = f"layer_{layer}"
        h = _norm(x, weights, f"{p}/self_attention/layer_norm")
        q, k, v = _linear(h, weights, f"{p}/self_attention/linear_0").chunk(3, dim=-1)
        d = q.shape[-1] // heads
        q, k, v = (t.view(-1, heads, d).transpose(0, 1) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1) @ v
        x = x + _linear(
            att.transpose(0, 1).reshape(-1, heads * d), weights, f"{p}/self_attention/linear_1"
        )
        h = _norm(x, weights, f"{p}/ffn/layer_norm")
        h = torch.nn.functional.gelu(_linear(h, weights, f"{p}/ffn/linear_0"))
        x = x + _linear(h, weights, f"{p}/ffn/linear_1")
        layer += 1
    return _norm(x, weights, "layer_norm").numpy()
