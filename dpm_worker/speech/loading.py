"""Loading a saved speech tokenizer (the built-in codebook or the CosyVoice2 S3Tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from dpm_worker.errors import ConfigError, ModelError
from dpm_worker.speech.encoder_tokenizer import KIND as ENCODER_KIND
from dpm_worker.speech.encoder_tokenizer import EncoderTokenizer, EncoderTokenizerConfig
from dpm_worker.speech.tokenizer import (
    TOKENIZER_CONFIG,
    TOKENIZER_WEIGHTS,
    BuiltinSpeechTokenizer,
    SpeechTokenizer,
    SpeechTokenizerConfig,
)


def load_speech_tokenizer(
    path: str | Path, *, device: str | torch.device | None = None
) -> SpeechTokenizer:
    """Load a saved speech tokenizer from its folder (or its ``speech_tokenizer.json``).

    Args:
        path: the folder or its ``speech_tokenizer.json``.
        device: where it tokenizes (None: CPU for the built-in codebook, CUDA when available
            for the S3Tokenizer).

    Raises:
        ModelError: files missing, unknown tokenizer type or mismatched shapes.
    """
    path = Path(path)
    config_path = path if path.suffix == ".json" else path / TOKENIZER_CONFIG
    if not config_path.is_file():
        raise ModelError(f"speech tokenizer config {TOKENIZER_CONFIG} is missing", str(path))
    data = json.loads(config_path.read_text())
    kind = data.pop("type", None)
    if kind == "s3tokenizer":
        from dpm_worker.speech.cosyvoice import CosyVoiceTokenizer

        return CosyVoiceTokenizer.from_config(data, config_path.parent, device=device)
    if kind == ENCODER_KIND:
        return _load_encoder_tokenizer(data, config_path)
    if kind != BuiltinSpeechTokenizer.kind:
        raise ModelError(f"unknown speech tokenizer type {kind!r}", str(config_path))
    weights_path = config_path.parent / TOKENIZER_WEIGHTS
    if not weights_path.is_file():
        raise ModelError(f"speech tokenizer weights {TOKENIZER_WEIGHTS} are missing", str(path))
    try:
        config = SpeechTokenizerConfig(**data)
        tensors = load_file(str(weights_path))
        return BuiltinSpeechTokenizer(
            config,
            tensors["spectral_centroids"],
            tensors["energy_centroids"],
            tensors["pitch_centroids"],
            spectral_norm=tensors.get("spectral_norm"),
            device=device or "cpu",
        )
    except (ConfigError, KeyError, TypeError) as exc:
        raise ModelError(f"speech tokenizer files do not match: {exc}", str(path)) from exc


def _load_encoder_tokenizer(data: dict, config_path: Path) -> EncoderTokenizer:
    """The encoder tokenizer saved beside ``config_path`` (its encoder is built on first use)."""
    weights_path = config_path.parent / TOKENIZER_WEIGHTS
    if not weights_path.is_file():
        raise ModelError(
            f"speech tokenizer weights {TOKENIZER_WEIGHTS} are missing", str(weights_path)
        )
    try:
        tensors = load_file(str(weights_path))
        return EncoderTokenizer(
            EncoderTokenizerConfig(type=ENCODER_KIND, **data),
            tensors["centroids"],
            tensors["frame_norm"],
            tensors["summary_norm"],
        )
    except (ConfigError, KeyError, TypeError) as exc:
        raise ModelError(f"speech tokenizer files do not match: {exc}", str(config_path)) from exc
