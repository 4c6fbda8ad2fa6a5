"""Adapter for CosyVoice2's S3Tokenizer (25 Hz, 6561 codes), the paper's speech tokenizer.

The optional dependency ``s3tokenizer`` (``pip install dpm-emotion[cosyvoice]``) is imported
only here and only when this tokenizer is used. Weights are never downloaded at run time: the
user supplies a state dict (``.safetensors`` or ``.pt``) from a local path or S3, referenced by
``speech_tokenizer.json`` (``{"type": "s3tokenizer", "weights": "s3tokenizer.safetensors"}``)
inside the model folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpm_worker.errors import ConfigError, ModelError

S3_RATE_HZ = 25.0
S3_VOCAB = 6561  # 3^8 FSQ codes


def _require_package() -> Any:
    try:
        import s3tokenizer
    except ImportError as exc:
        raise ConfigError(
            "the S3Tokenizer adapter needs the optional package: pip install 'dpm-emotion[cosyvoice]'"
        ) from exc
    return s3tokenizer


class S3SpeechTokenizer:
    """Wraps ``s3tokenizer.S3TokenizerV2`` behind the :class:`SpeechTokenizer` interface.

    Args:
        model: an ``S3TokenizerV2`` module (weights already loaded, or random in tests).
        device: where to run it.
    """

    kind = "s3tokenizer"
    rate_hz = S3_RATE_HZ
    vocab_size = S3_VOCAB

    def __init__(self, model: Any, device: str | torch.device = "cpu") -> None:
        self.model: Any = model.to(device).eval()
        self.device = torch.device(device)

    @classmethod
    def random(cls, seed: int = 0, name: str = "speech_tokenizer_v2_25hz") -> S3SpeechTokenizer:
        """Randomly initialised weights (shape and rate tests; no download)."""
        package = _require_package()
        torch.manual_seed(seed)
        return cls(package.S3TokenizerV2(name))

    @classmethod
    def from_weights(
        cls, weights: str | Path, name: str = "speech_tokenizer_v2_25hz"
    ) -> S3SpeechTokenizer:
        """Load a user-supplied state dict (local path; fetch S3 copies with the model folder)."""
        package = _require_package()
        path = Path(weights)
        if not path.is_file():
            raise ModelError("S3Tokenizer weights are missing", str(path))
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        model = package.S3TokenizerV2(name)
        missing, unexpected = model.load_state_dict(state, strict=False)
        real_missing = [k for k in missing if "mel_filters" not in k and "window" not in k]
        if real_missing or unexpected:
            raise ModelError(
                f"S3Tokenizer weights do not match: missing {real_missing[:5]}, unexpected {unexpected[:5]}",
                str(path),
            )
        return cls(model)

    @classmethod
    def from_config(cls, data: dict, folder: Path) -> S3SpeechTokenizer:
        weights = data.get("weights")
        if not weights:
            raise ModelError(
                "speech_tokenizer.json of type s3tokenizer names no weights file", str(folder)
            )
        return cls.from_weights(folder / weights, data.get("name", "speech_tokenizer_v2_25hz"))

    @torch.no_grad()
    def encode(self, wave: np.ndarray) -> np.ndarray:
        """float32 mono 16 kHz -> int64 codes at 25 Hz."""
        package = _require_package()
        samples = torch.as_tensor(np.ascontiguousarray(wave, dtype=np.float32))
        if samples.ndim != 1:
            raise ConfigError(
                f"encode expects a mono 1-D waveform, got shape {tuple(samples.shape)}"
            )
        mel = package.log_mel_spectrogram(samples)
        mels, lengths = package.padding([mel])
        codes, code_lengths = self.model.quantize(mels.to(self.device), lengths.to(self.device))
        return codes[0, : int(code_lengths[0])].to(torch.int64).cpu().numpy()
