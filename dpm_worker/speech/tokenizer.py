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
from dataclasses import asdict
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from safetensors.torch import save_file

from dpm_worker.errors import ConfigError
from dpm_worker.speech.features import BlockFeatures, block_count, compute_block_features
from dpm_worker.speech.smile import smile_batch_features
from dpm_worker.speech.speaker_levels import ConversationLevels, SpeakerLevels, relative_features
from dpm_worker.speech.summary import utterance_summaries
from dpm_worker.speech.tokenizer_config import SpeechTokenizerConfig

TOKENIZER_CONFIG = "speech_tokenizer.json"
TOKENIZER_WEIGHTS = "speech_tokenizer.safetensors"


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


class BuiltinSpeechTokenizer:
    """Product-codebook tokenizer over spectral shape, loudness and pitch (module docstring).

    Args:
        config: the codebook's shape.
        spectral_centroids: ``[n_spectral, n_mels]``.
        energy_centroids: ``[n_energy]`` log10 mean-square levels.
        pitch_centroids: ``[n_pitch - 1]`` log2 Hz levels of voiced blocks.
        spectral_norm: ``[2, spectral_dim]``: the centre and scale each spectral dimension is
            standardised by before it is coded (eGeMAPS descriptors come in unlike units); None
            codes the spectral vector as it is (the mel front end).
        device: where features and codes are computed (default CPU).
    """

    kind = "builtin-product"
    # Set by a model with an acoustic head: tokenize_utterances then also gives every
    # utterance its acoustic summary (``Utterance.acoustic``).
    summaries = False

    def __init__(
        self,
        config: SpeechTokenizerConfig,
        spectral_centroids: torch.Tensor,
        energy_centroids: torch.Tensor,
        pitch_centroids: torch.Tensor,
        *,
        spectral_norm: torch.Tensor | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if spectral_norm is not None and tuple(spectral_norm.shape) != (2, config.spectral_dim):
            raise ConfigError(
                f"spectral_norm must have shape {(2, config.spectral_dim)}, got "
                f"{tuple(spectral_norm.shape)}"
            )
        expected = {
            "spectral_centroids": (config.n_spectral, config.spectral_dim),
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
        self.spectral_norm = (
            None if spectral_norm is None else spectral_norm.to(self.device, torch.float32)
        )

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
        for name, default in (("features", "mel"), ("spectral_relative", False)):
            if fields[name] == default:  # codebooks from before the option keep theirs
                del fields[name]
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
        for tensor in (self.spectral_centroids, self.energy_centroids, self.pitch_centroids):
            digest.update(tensor.cpu().numpy().tobytes())
        if self.spectral_norm is not None:
            digest.update(self.spectral_norm.cpu().numpy().tobytes())
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
        return self._codes(feats, counts)

    @torch.no_grad()
    def quantize_with_summaries(
        self,
        feats: BlockFeatures,
        counts: list[int],
        *,
        levels: SpeakerLevels | None = None,
        speakers: Sequence[Hashable] | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """:meth:`quantize`'s codes and each wave's acoustic summary (``speech/summary.py``),
        pooled from the same (speaker-relative) block features the codes quantize."""
        if self.config.speaker_relative:
            feats = self._relative(feats, counts, levels, speakers)
        return self._codes(feats, counts), utterance_summaries(feats, counts)

    def _codes(self, feats: BlockFeatures, counts: list[int]) -> list[np.ndarray]:
        spectral_of = feats.spectral
        if self.spectral_norm is not None:
            spectral_of = (spectral_of - self.spectral_norm[0]) / self.spectral_norm[1]
        # cdist per wave: it picks its algorithm (matmul or direct) by row count, and the two
        # round differently; one call per wave keeps the codes bitwise those of ``encode``.
        spectral = torch.cat(
            [
                torch.cdist(part, self.spectral_centroids).argmin(dim=1)
                for part in spectral_of.split(counts)
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
        if self.config.features == "egemaps":
            feats = smile_batch_features(padded, self.config.sample_rate, self.rate_hz)
            return feats.to(self.device), counts
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
            own, key = (
                (self.new_levels(), None)
                if levels is None or speakers is None
                else (levels, speakers[i])
            )
            reference = own.update(key, part)
            shift = own.spectral_reference(key) if self.config.spectral_relative else None
            parts.append(relative_features(part, reference, shift))
        return BlockFeatures(
            spectral=torch.cat([p.spectral for p in parts]),
            log_energy=torch.cat([p.log_energy for p in parts]),
            log_f0=torch.cat([p.log_f0 for p in parts]),
        )

    def new_levels(self) -> SpeakerLevels:
        """Empty running levels of the kind this codebook's references need."""
        return SpeakerLevels(spectral=self.config.spectral_relative)

    def new_conversation_levels(self) -> ConversationLevels:
        """Empty references of one conversation (``speaker_reference: conversation``)."""
        return ConversationLevels(spectral=self.config.spectral_relative)

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``speech_tokenizer.json`` and ``.safetensors`` into ``folder``; return the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / TOKENIZER_WEIGHTS
        tensors = {
            "spectral_centroids": self.spectral_centroids.cpu().contiguous(),
            "energy_centroids": self.energy_centroids.cpu().contiguous(),
            "pitch_centroids": self.pitch_centroids.cpu().contiguous(),
        }
        if self.spectral_norm is not None:
            tensors["spectral_norm"] = self.spectral_norm.cpu().contiguous()
        save_file(tensors, str(weights))
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
            torch.randn(config.n_spectral, config.spectral_dim, generator=gen),
            torch.linspace(-6.0, -1.0, config.n_energy),
            torch.linspace(np.log2(80.0), np.log2(400.0), config.n_pitch - 1),
            spectral_norm=None
            if config.features == "mel"
            else torch.stack([torch.zeros(config.spectral_dim), torch.ones(config.spectral_dim)]),
        )


def _nearest_level(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted 1-D ``levels`` for every value."""
    return (values[:, None] - levels[None, :]).abs().argmin(dim=1)
