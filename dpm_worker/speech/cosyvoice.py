"""CosyVoice2's S3Tokenizer (25 Hz, one FSQ codebook of 3**8 codes) as a speech tokenizer.

This is the paper's tokenizer. The model code comes from the optional PyPI package
``s3tokenizer`` (``pip install 'dpm-emotion[cosyvoice]'``), imported only when a tokenizer is
built. Its weights are supplied by the user as a local file or an ``s3://`` URI, copied into a
local cache: the package's own ``load_model`` downloads from a model hub at run time, which a
worker must never do, so it is not used. Accepted weight files: ``.safetensors``, a PyTorch
state dict (``.pt``/``.pth``/``.bin``, read with ``weights_only=True``), or the official
``speech_tokenizer_v2.onnx`` (converted in memory by the package's ``onnx2torch``; ONNX is a
protobuf, so nothing is unpickled).

Token rate: the front end makes one log-mel frame per 160 samples (100 Hz) and two stride-2
convolutions downsample by 4, so ``n`` samples give ``ceil((n // 160) / 4)`` codes, i.e.
``round(25 * seconds)`` for whole 40 ms blocks. Audio past 30 s is cut by the package into
30 s windows with 4 s overlap whose codes are merged, which keeps the same count.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpm_worker.errors import AudioError, ConfigError, ModelError, StorageError
from dpm_worker.storage import cache_root, get_filesystem, is_remote, redact, resolve_relative

INSTALL_HINT = "pip install 'dpm-emotion[cosyvoice]'"
TOKENIZER_CONFIG = "speech_tokenizer.json"
TOKENIZER_WEIGHTS = "speech_tokenizer.safetensors"


@dataclass(frozen=True)
class ModelSpec:
    """What a released S3Tokenizer model fixes: its mel bins, token rate and codebook size."""

    n_mels: int
    rate_hz: float
    vocab_size: int


# The package's v2 model: 128 log-mel bins, 25 Hz, FSQ with 8 dimensions of 3 levels.
SUPPORTED_MODELS = {
    "speech_tokenizer_v2_25hz": ModelSpec(n_mels=128, rate_hz=25.0, vocab_size=3**8)
}
HOP_SAMPLES = 160
MIN_STFT_SAMPLES = 201
# AudioEncoderV2 precomputes its rotary tables for 64-dimensional heads.
HEAD_DIM = 64
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


@dataclass(frozen=True)
class CosyVoiceTokenizerConfig:
    """Which S3Tokenizer and its encoder's shape (the defaults are the released v2 model).

    Args:
        model_name: the package's model name; only ``speech_tokenizer_v2_25hz`` is supported.
        n_audio_state: encoder width.
        n_audio_head: attention heads (``n_audio_state / n_audio_head`` must be 64).
        n_audio_layer: encoder blocks.
    """

    model_name: str = "speech_tokenizer_v2_25hz"
    n_audio_state: int = 1280
    n_audio_head: int = 20
    n_audio_layer: int = 6

    def __post_init__(self) -> None:
        if self.model_name not in SUPPORTED_MODELS:
            raise ConfigError(
                f"model_name must be one of {sorted(SUPPORTED_MODELS)}, got {self.model_name!r}"
            )
        if self.n_audio_head < 1 or self.n_audio_state != HEAD_DIM * self.n_audio_head:
            raise ConfigError(
                f"n_audio_state must be {HEAD_DIM} * n_audio_head, got n_audio_state="
                f"{self.n_audio_state}, n_audio_head={self.n_audio_head}"
            )
        if self.n_audio_layer < 1:
            raise ConfigError(f"n_audio_layer must be >= 1, got {self.n_audio_layer}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CosyVoiceTokenizerConfig:
        """Build from a dict, ignoring keys that are not config fields (e.g. ``weights``)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def s3tokenizer_available() -> bool:
    """True when the optional ``s3tokenizer`` package is installed (it is not imported)."""
    return importlib.util.find_spec("s3tokenizer") is not None


def _import_s3tokenizer() -> Any:
    """Import ``s3tokenizer`` or raise a ConfigError that says how to install it."""
    if not s3tokenizer_available():
        raise ConfigError(
            f"the CosyVoice2 speech tokenizer needs the 's3tokenizer' package: {INSTALL_HINT}"
        )
    try:
        import s3tokenizer
        import s3tokenizer.model_v2
    except (ImportError, OSError) as exc:
        # s3tokenizer imports torchaudio at module level; a torchaudio built for another torch
        # (or for CUDA on a CPU-only torch) fails here with OSError, not ImportError.
        raise ConfigError(
            f"'s3tokenizer' is installed but cannot be imported ({exc}); its torchaudio "
            f"dependency must match the installed torch {torch.__version__}"
        ) from exc
    return s3tokenizer


def fetch_weights(
    uri: str | Path, *, cache_dir: str | Path | None = None, endpoint_url: str | None = None
) -> Path:
    """Return a local path to the weights file at ``uri``, copying an ``s3://`` object first.

    A remote file is downloaded into ``cache_dir/<sha256(uri)>/`` under a temporary name and
    renamed when complete; a cached copy is reused only while its size and ETag still match
    the remote object's.

    Raises:
        ModelError: the file does not exist.
        StorageError: the remote location cannot be read.
    """
    uri = str(uri)
    if not is_remote(uri):
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise ModelError("speech tokenizer weights file does not exist", str(path))
        return path
    fs, remote = get_filesystem(uri, endpoint_url)
    try:
        info = fs.info(remote)
    except FileNotFoundError:
        raise ModelError("speech tokenizer weights file does not exist", uri) from None
    except OSError as exc:
        raise StorageError(f"cannot read {uri}: {redact(str(exc))}") from exc
    source = {"uri": uri, "size": info.get("size"), "etag": info.get("ETag")}
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "speech"
    folder = folder / hashlib.sha256(uri.encode()).hexdigest()[:24]
    local = folder / Path(remote).name
    stamp = folder / f".{local.name}.source.json"
    if local.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == source:
        return local
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{local.name}.part-{uuid.uuid4().hex[:8]}"
    try:
        fs.get_file(remote, str(partial))
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise StorageError(f"cannot copy {uri}: {redact(str(exc))}") from exc
    if partial.stat().st_size != source["size"]:
        got = partial.stat().st_size
        partial.unlink()
        raise StorageError(f"copy of {uri} has {got} bytes, the object has {source['size']}")
    os.replace(partial, local)
    stamp.write_text(json.dumps(source))
    return local


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read weights from safetensors, a ``weights_only`` torch file, or the official ONNX.

    Raises:
        ModelError: an unknown file type or an unreadable file.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if suffix in TORCH_SUFFIXES:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ModelError(
                    f"expected a state dict, found a {type(state).__name__}", str(path)
                )
            return state
        if suffix == ".onnx":
            return _import_s3tokenizer().onnx2torch(str(path), None, False)
    except ModelError:
        raise
    except Exception as exc:  # the readers raise many types (pickle, safetensors, protobuf)
        raise ModelError(f"cannot read speech tokenizer weights: {exc}", str(path)) from exc
    raise ModelError(
        f"unknown weights file type {suffix!r}; use .safetensors, {', '.join(TORCH_SUFFIXES)} "
        "or .onnx",
        str(path),
    )


def build_model(config: CosyVoiceTokenizerConfig) -> torch.nn.Module:
    """An S3TokenizerV2 of ``config``'s shape with freshly initialised (random) weights."""
    model_v2 = _import_s3tokenizer().model_v2
    spec = SUPPORTED_MODELS[config.model_name]
    # A fresh ModelConfig: the package's default argument is one shared instance it mutates.
    model_config = model_v2.ModelConfig(
        n_mels=spec.n_mels,
        n_audio_state=config.n_audio_state,
        n_audio_head=config.n_audio_head,
        n_audio_layer=config.n_audio_layer,
        n_codebook_size=spec.vocab_size,
    )
    return model_v2.S3TokenizerV2(config.model_name, config=model_config)


class CosyVoiceTokenizer:
    """CosyVoice2's S3Tokenizer behind the :class:`~dpm_worker.speech.tokenizer.SpeechTokenizer` API.

    Args:
        weights: a weights file (local path or ``s3://`` URI); see the module docstring.
        config: the model name and encoder shape (defaults: the released v2 model).
        device: where the encoder runs; None picks CUDA when available, else CPU. It always
            runs in float32: the FSQ rounds ``tanh`` outputs, so half precision could flip codes.
        cache_dir: where remote weights are copied (default ``$DPM_CACHE_DIR/speech``).
        endpoint_url: an explicit S3 endpoint (default: from the environment).

    Raises:
        ConfigError: ``s3tokenizer`` is missing or broken, or the config is invalid.
        ModelError: the weights file is missing, unreadable or does not fit the config.
    """

    kind = "s3tokenizer"

    def __init__(
        self,
        weights: str | Path,
        config: CosyVoiceTokenizerConfig | None = None,
        *,
        device: str | torch.device | None = None,
        cache_dir: str | Path | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        self.config = config or CosyVoiceTokenizerConfig()
        self._s3t = _import_s3tokenizer()
        self.weights_path = fetch_weights(weights, cache_dir=cache_dir, endpoint_url=endpoint_url)
        state = read_state_dict(self.weights_path)
        model = build_model(self.config)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(
                f"weights do not fit {self.config}: {str(exc)[:600]}", str(weights)
            ) from exc
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        # Typed Any: quantize() is the package's method, unknown to nn.Module.
        self.model: Any = model.to(self.device).eval().requires_grad_(False)
        self._fingerprint = _fingerprint(self.config, self.weights_path)

    @classmethod
    def from_config(
        cls, data: dict[str, Any], folder: str | Path, *, device: str | torch.device | None = None
    ) -> CosyVoiceTokenizer:
        """Build from the fields of a ``speech_tokenizer.json`` (without its ``type``).

        ``data["weights"]`` (optional) is a local path or URI, relative paths resolved against
        ``folder``; without it the weights are ``folder/speech_tokenizer.safetensors``.

        Raises:
            ModelError: an invalid config or missing/mismatched weights (names the folder).
        """
        folder = str(folder)
        weights = resolve_relative(str(data.get("weights", TOKENIZER_WEIGHTS)), folder)
        try:
            config = CosyVoiceTokenizerConfig.from_dict(data)
        except ConfigError as exc:
            raise ModelError(f"invalid {TOKENIZER_CONFIG}: {exc}", folder) from exc
        return cls(weights, config, device=device)

    @property
    def rate_hz(self) -> float:
        return SUPPORTED_MODELS[self.config.model_name].rate_hz

    @property
    def vocab_size(self) -> int:
        return SUPPORTED_MODELS[self.config.model_name].vocab_size

    @property
    def fingerprint(self) -> str:
        """sha256 of the config, the weights file and the package version (cache key)."""
        return self._fingerprint

    def encode(self, wave: np.ndarray) -> np.ndarray:
        """float32 mono 16 kHz samples -> int64 codes in ``[0, 6561)`` at 25 Hz."""
        return self.encode_batch([wave])[0]

    @torch.inference_mode()
    def encode_batch(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Encode several waveforms in one padded forward pass (same codes as one by one)."""
        mels, keep = [], []
        for i, wave in enumerate(waves):
            samples = np.asarray(wave, dtype=np.float32)
            if samples.ndim != 1:
                raise ConfigError(
                    f"encode expects a mono 1-D waveform, got shape {tuple(samples.shape)}"
                )
            if not np.isfinite(samples).all():
                raise AudioError(f"waveform {i} contains NaN or infinite samples")
            # Fewer than 160 samples make no mel frame; such a wave has zero codes.
            if len(samples) >= HOP_SAMPLES:
                # The centred STFT reflect-pads 200 samples, which needs a longer input; zeros
                # up to 201 samples keep the frame count (201 // 160 == n // 160 for n < 320).
                mel = self._s3t.log_mel_spectrogram(
                    torch.tensor(samples),
                    n_mels=SUPPORTED_MODELS[self.config.model_name].n_mels,
                    padding=max(0, MIN_STFT_SAMPLES - len(samples)),
                    device=self.device,
                )
                mels.append(mel)
                keep.append(i)
        out = [np.zeros(0, dtype=np.int64) for _ in waves]
        if not mels:
            return out
        mel_batch, mel_lens = self._s3t.padding(mels)
        codes, code_lens = self.model.quantize(mel_batch.to(self.device), mel_lens.to(self.device))
        codes = codes.to(torch.int64).cpu().numpy()
        for row, i in enumerate(keep):
            out[i] = codes[row, : int(code_lens[row])].copy()
        return out

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``speech_tokenizer.json`` and the weights as safetensors into ``folder``.

        The weights are copied so a model folder carries its tokenizer and the folder's
        manifest covers them.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / TOKENIZER_WEIGHTS
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(weights))
        config = folder / TOKENIZER_CONFIG
        config.write_text(json.dumps({"type": self.kind, **asdict(self.config)}, indent=2) + "\n")
        return [config, weights]


def _fingerprint(config: CosyVoiceTokenizerConfig, weights: Path) -> str:
    from importlib.metadata import version

    digest = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode())
    # The package version is part of the key: 0.2 and 0.3 differ in a LayerNorm epsilon,
    # which can change codes for the same weights.
    digest.update(f"s3tokenizer=={version('s3tokenizer')}\n".encode())
    with open(weights, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
