"""Speech tokenizers: waveform (float32, mono, 16 kHz) -> int64 codes at a fixed rate.

The built-in tokenizer quantizes each 40 ms block (25 Hz) with a *product* codebook:
``code = (spectral * n_energy + energy) * n_pitch + pitch``, each factor fitted separately with
scikit-learn's MiniBatchKMeans on the training corpus. Why a product and not one k-means over
the concatenated features: a joint k-means spends its codes on the spectral directions (many
dimensions, much variance) and merges blocks that differ only in loudness or pitch, which is
exactly what emotions change. A product codebook keeps 8 loudness levels and 16 pitch levels
(one of them "unvoiced") in every token by construction.

The CosyVoice2 S3Tokenizer (25 Hz, the paper's tokenizer) is available through
:class:`CosyVoiceTokenizer` with user-supplied weights; see ``dpm_worker/speech/cosyvoice.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dpm_worker.audio import SAMPLE_RATE
from dpm_worker.errors import ConfigError, ModelError
from dpm_worker.speech.features import BlockFeatures, block_count, compute_block_features
from dpm_worker.speech.speaker_levels import SpeakerLevels, relative_features

TOKENIZER_CONFIG = "speech_tokenizer.json"
TOKENIZER_WEIGHTS = "speech_tokenizer.safetensors"
SPEAKER_REFERENCES = ("running", "conversation")


@runtime_checkable
class SpeechTokenizer(Protocol):
    """Anything that turns a 16 kHz mono waveform into codes at ``rate_hz``."""

    @property
    def rate_hz(self) -> float:
        """Tokens per second."""
        ...

    @property
    def vocab_size(self) -> int:
        """Number of distinct codes."""
        ...

    def encode(self, wave: np.ndarray) -> np.ndarray:
        """float32 mono 16 kHz samples -> int64 codes in ``[0, vocab_size)``."""
        ...

    def encode_batch(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Several waveforms at once on the tokenizer's device; the codes ``encode`` gives."""
        ...


@dataclass(frozen=True)
class SpeechTokenizerConfig:
    """Shape of the built-in product codebook.

    Args:
        n_spectral: k-means codes for the spectral shape (phone class, roughly).
        n_energy: k-means levels of unnormalised log-energy.
        n_pitch: pitch levels; level 0 is "unvoiced", the rest are k-means levels of log f0.
        n_mels: mel bands of the spectral feature.
        sample_rate: input sample rate (the interface fixes 16 kHz).
        rate_hz: tokens per second.
        speaker_relative: quantize pitch and loudness as shifts from the speaker's running
            reference levels in the conversation (``dpm_worker/speech/speaker_levels.py``)
            instead of absolute levels; the codebook's levels are then shifts.
        speaker_reference: a speaker-relative codebook's reference levels: ``running`` (the
            mean of the speaker's utterances so far: causal, an utterance's codes never depend
            on later audio) or ``conversation`` (the mean of all the speaker's utterances in the
            conversation: a batch job holds the whole recording; a conversation's block
            features are then held until its last utterance is featurized, and coded after).
    """

    n_spectral: int = 4
    n_energy: int = 8
    n_pitch: int = 16
    n_mels: int = 40
    sample_rate: int = SAMPLE_RATE
    rate_hz: float = 25.0
    speaker_relative: bool = False
    speaker_reference: str = "running"

    def __post_init__(self) -> None:
        if self.speaker_reference not in SPEAKER_REFERENCES:
            raise ConfigError(
                f"speaker_reference must be one of {SPEAKER_REFERENCES}, got {self.speaker_reference!r}"
            )
        for name in ("n_spectral", "n_energy"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_pitch < 2:
            raise ConfigError(f"n_pitch must be >= 2 (unvoiced + voiced), got {self.n_pitch}")
        if self.n_mels < 4:
            raise ConfigError(f"n_mels must be >= 4, got {self.n_mels}")
        if (
            self.rate_hz <= 0
            or abs(self.sample_rate / self.rate_hz - round(self.sample_rate / self.rate_hz)) > 1e-6
        ):
            raise ConfigError(
                f"rate_hz must divide sample_rate {self.sample_rate} into whole samples, got {self.rate_hz}"
            )

    @property
    def vocab_size(self) -> int:
        return self.n_spectral * self.n_energy * self.n_pitch


class BuiltinSpeechTokenizer:
    """Product-codebook tokenizer over spectral shape, loudness and pitch (module docstring).

    Args:
        config: the codebook's shape.
        spectral_centroids: ``[n_spectral, n_mels]``.
        energy_centroids: ``[n_energy]`` log10 mean-square levels.
        pitch_centroids: ``[n_pitch - 1]`` log2 Hz levels of voiced blocks.
        device: where features and codes are computed (default CPU).
    """

    kind = "builtin-product"

    def __init__(
        self,
        config: SpeechTokenizerConfig,
        spectral_centroids: torch.Tensor,
        energy_centroids: torch.Tensor,
        pitch_centroids: torch.Tensor,
        *,
        device: str | torch.device = "cpu",
    ) -> None:
        expected = {
            "spectral_centroids": (config.n_spectral, config.n_mels),
            "energy_centroids": (config.n_energy,),
            "pitch_centroids": (config.n_pitch - 1,),
        }
        given = {
            "spectral_centroids": spectral_centroids,
            "energy_centroids": energy_centroids,
            "pitch_centroids": pitch_centroids,
        }
        for name, shape in expected.items():
            if tuple(given[name].shape) != shape:
                raise ConfigError(f"{name} must have shape {shape}, got {tuple(given[name].shape)}")
        self.config = config
        self.device = torch.device(device)
        self.spectral_centroids = spectral_centroids.to(self.device, torch.float32)
        # Sorted 1-D levels keep code order meaningful (louder / higher = larger index).
        self.energy_centroids = torch.sort(energy_centroids.to(self.device, torch.float32)).values
        self.pitch_centroids = torch.sort(pitch_centroids.to(self.device, torch.float32)).values

    @property
    def rate_hz(self) -> float:
        return self.config.rate_hz

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def speaker_relative(self) -> bool:
        """Whether codes are shifts from the speaker's reference levels (see the config)."""
        return self.config.speaker_relative

    @property
    def speaker_reference(self) -> str:
        """``running`` or ``conversation`` (see the config)."""
        return self.config.speaker_reference

    @property
    def fingerprint(self) -> str:
        """sha256 of the codebook and config: the key of cached tokenizations."""
        fields = asdict(self.config)
        if not self.config.speaker_relative:
            # Absolute codebooks keep the fingerprint they had before the option existed.
            del fields["speaker_relative"]
        if self.config.speaker_reference == "running":
            # Running references keep the fingerprint they had before the option existed.
            del fields["speaker_reference"]
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
        for tensor in (self.spectral_centroids, self.energy_centroids, self.pitch_centroids):
            digest.update(tensor.cpu().numpy().tobytes())
        return digest.hexdigest()

    def encode(self, wave: np.ndarray) -> np.ndarray:
        """float32 mono waveform at ``config.sample_rate`` -> int64 codes, one per block.

        A speaker-relative codebook given one waveform alone takes that utterance's own levels
        as the reference; :func:`dpm_worker.speech.tokenize_utterances` keeps the speakers'
        references across a conversation.
        """
        return self.encode_batch([wave])[0]

    @torch.no_grad()
    def encode_batch(
        self,
        waves: Sequence[np.ndarray],
        *,
        levels: SpeakerLevels | None = None,
        speakers: Sequence[Hashable] | None = None,
    ) -> list[np.ndarray]:
        """Encode several waveforms at once on ``self.device``: the codes ``encode`` gives each.

        Every wave is zero-padded to whole blocks as ``encode`` pads it, the blocks of all waves
        are stacked into one ``[blocks, block_samples]`` tensor, featurized and quantized
        together (every feature is computed per block), and the codes are split back per wave.

        Args:
            waves: float32 mono waveforms, in dialogue order.
            levels: a speaker-relative codebook's references: running ones (updated in wave
                order) or a conversation's fixed ones (``ConversationLevels``); without it each
                wave is its own reference. Ignored by an absolute codebook.
            speakers: one key per wave naming its speaker for ``levels``.

        Raises:
            ConfigError: a wave is not 1-D, or ``levels`` without one speaker key per wave.
        """
        if not waves:
            return []
        feats, counts = self.block_features(waves)
        return self.quantize(feats, counts, levels=levels, speakers=speakers)

    @torch.no_grad()
    def quantize(
        self,
        feats: BlockFeatures,
        counts: list[int],
        *,
        levels: SpeakerLevels | None = None,
        speakers: Sequence[Hashable] | None = None,
    ) -> list[np.ndarray]:
        """The codes of waves featurized by :meth:`block_features` (``counts`` blocks each);
        ``levels`` and ``speakers`` as in :meth:`encode_batch`."""
        if self.config.speaker_relative:
            feats = self._relative(feats, counts, levels, speakers)
        # cdist per wave: it picks its algorithm (matmul or direct) by row count, and the two
        # round differently; one call per wave keeps the codes bitwise those of ``encode``.
        spectral = torch.cat(
            [
                torch.cdist(part, self.spectral_centroids).argmin(dim=1)
                for part in feats.spectral.split(counts)
            ]
        )
        energy = _nearest_level(feats.log_energy, self.energy_centroids)
        voiced = ~torch.isnan(feats.log_f0)
        pitch = torch.where(
            voiced, 1 + _nearest_level(torch.nan_to_num(feats.log_f0), self.pitch_centroids), 0
        )
        codes = (spectral * self.config.n_energy + energy) * self.config.n_pitch + pitch
        return [part.numpy().copy() for part in codes.to(torch.int64).cpu().split(counts)]

    @torch.no_grad()
    def block_features(self, waves: Sequence[np.ndarray]) -> tuple[BlockFeatures, list[int]]:
        """The block features of all (non-empty) ``waves`` stacked, and each wave's block count:
        what :meth:`quantize` codes."""
        block = int(round(self.config.sample_rate / self.rate_hz))
        counts, padded = [], []
        for wave in waves:
            samples = torch.as_tensor(np.ascontiguousarray(wave, dtype=np.float32))
            if samples.ndim != 1:
                raise ConfigError(
                    f"encode expects a mono 1-D waveform, got shape {tuple(samples.shape)}"
                )
            count = block_count(int(samples.shape[0]), block)
            counts.append(count)
            padded.append(torch.nn.functional.pad(samples, (0, count * block - samples.shape[0])))
        feats = compute_block_features(
            torch.cat(padded).to(self.device),
            sample_rate=self.config.sample_rate,
            rate_hz=self.rate_hz,
            n_mels=self.config.n_mels,
        )
        return feats, counts

    def _relative(
        self,
        feats: BlockFeatures,
        counts: list[int],
        levels: SpeakerLevels | None,
        speakers: Sequence[Hashable] | None,
    ) -> BlockFeatures:
        """Every wave's blocks as shifts from its speaker's reference, in wave order."""
        if levels is not None and (speakers is None or len(speakers) != len(counts)):
            raise ConfigError(
                f"speaker-relative codes of {len(counts)} waves need as many speaker keys, got "
                f"{None if speakers is None else len(speakers)}"
            )
        parts = []
        for i, (spectral, energy, f0) in enumerate(
            zip(
                feats.spectral.split(counts),
                feats.log_energy.split(counts),
                feats.log_f0.split(counts),
                strict=True,
            )
        ):
            part = BlockFeatures(spectral=spectral, log_energy=energy, log_f0=f0)
            if levels is None or speakers is None:
                reference = SpeakerLevels().update(None, part)
            else:
                reference = levels.update(speakers[i], part)
            parts.append(relative_features(part, reference))
        return BlockFeatures(
            spectral=feats.spectral,
            log_energy=torch.cat([p.log_energy for p in parts]),
            log_f0=torch.cat([p.log_f0 for p in parts]),
        )

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``speech_tokenizer.json`` and ``.safetensors`` into ``folder``; return the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / TOKENIZER_WEIGHTS
        save_file(
            {
                "spectral_centroids": self.spectral_centroids.cpu().contiguous(),
                "energy_centroids": self.energy_centroids.cpu().contiguous(),
                "pitch_centroids": self.pitch_centroids.cpu().contiguous(),
            },
            str(weights),
        )
        config = folder / TOKENIZER_CONFIG
        config.write_text(json.dumps({"type": self.kind, **asdict(self.config)}, indent=2) + "\n")
        return [config, weights]

    @classmethod
    def random(
        cls, config: SpeechTokenizerConfig | None = None, seed: int = 0
    ) -> BuiltinSpeechTokenizer:
        """An untrained tokenizer with plausible levels, for tests and random models."""
        config = config or SpeechTokenizerConfig()
        gen = torch.Generator().manual_seed(seed)
        return cls(
            config,
            torch.randn(config.n_spectral, config.n_mels, generator=gen),
            torch.linspace(-6.0, -1.0, config.n_energy),
            torch.linspace(np.log2(80.0), np.log2(400.0), config.n_pitch - 1),
        )


def _nearest_level(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted 1-D ``levels`` for every value."""
    return (values[:, None] - levels[None, :]).abs().argmin(dim=1)


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
            device=device or "cpu",
        )
    except (ConfigError, KeyError, TypeError) as exc:
        raise ModelError(f"speech tokenizer files do not match: {exc}", str(path)) from exc
