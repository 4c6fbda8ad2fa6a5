"""Speech units and acoustic summaries from the pretrained encoder (``whisper-units``).

What each utterance becomes (DESIGN section 4):
- **Units** (the LLM's audio tokens and the targets of its audio loss and of the memory's
  audio write): the encoder's 50 Hz states averaged in pairs (25 Hz, one per 40 ms), each
  standardised by the training frames' mean and spread and given the index of its nearest
  k-means centroid (``n_units`` of them, fitted by :func:`fit_encoder_tokenizer`).
- **Summary** (what the acoustic head reads): the mean and standard deviation of the states over
  the utterance, beside the pooled prosody and voice-quality statistics of the fast block
  features (``speech/summary.py`` over ``speech/features.py``: pitch, loudness and spectral
  shape; ``prosody: true``), **relative to the speaker**: every entry minus the speaker's mean
  over the conversation, divided by the speaker's spread. A speaker with few utterances has
  their mean and variance shrunk toward the training corpus's (``prior_count`` pseudo
  utterances), so one lone turn is read against the corpus rather than against itself.
  A probe measured why: per-speaker standardisation is worth +0.09 UA on unseen actors and
  +0.13 to +0.17 on an unseen corpus (issue 31).

The speaker reference is the conversation's (``speaker_reference: conversation``): a batch
job holds the whole recording; ``tokenize_utterances`` counts each speaker's summaries over
the conversation (:class:`SummaryLevels`) before any is standardised.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from dpm_worker.errors import ConfigError
from dpm_worker.speech.encoder import SAMPLE_RATE, STATE_RATE_HZ, SpeechEncoder
from dpm_worker.speech.encoder_queue import EncoderQueue
from dpm_worker.speech.encoder_weights import ENCODERS, encoder_weights
from dpm_worker.speech.features import block_count, compute_block_features
from dpm_worker.speech.summary import utterance_summary

KIND = "whisper-units"
PROSODY_MELS = 40
UNIT_RATE_HZ = STATE_RATE_HZ / 2


@dataclass(frozen=True)
class EncoderTokenizerConfig:
    """Shape of the encoder tokenizer (module docstring).

    Args:
        encoder: a pinned encoder (``encoder_weights.ENCODERS``).
        n_units: k-means units (the LLM's audio vocabulary).
        prosody: add the fast block features' pooled prosody statistics to the summary.
        prior_count: pseudo utterances of the corpus-wide mean and variance in each speaker's
            reference (shrinkage for speakers with few utterances).
        summary_layers: the encoder blocks whose states are pooled into the summary (each
            through a pinned truncation of the encoder, its output layer norm applied); empty:
            the final states, as the units. Measured (issue 31): blocks 2 and 4 read speakers
            and corpora the model never heard better than the last block.
        threads: CPU threads of the encoder.
        device: ``auto``, ``cpu`` or ``cuda``: where the encoder runs.
        batch: most utterances (30 s pieces) per encoder call, over everything the threads
            tokenizing at once have pending (``encoder_queue.py``); None: 1 on CPU, where
            batches are slower, 16 on CUDA (``encoder.pick_batch``).
        bucket_s: utterances batched together have lengths that round up to the same multiple
            of this (each padded with silence to the longest of its batch). The default 0.02 s
            (one encoder state) batches equal lengths only, whose states are those they have
            alone; padding moves them, and labels with them (``dpm bench encoder_batch``;
            docs/encoder_batching.md).
        type: the saved kind (``whisper-units``).
    """

    encoder: str = "whisper-base"
    n_units: int = 256
    prosody: bool = True
    prior_count: float = 2.0
    summary_layers: tuple[int, ...] = ()
    threads: int = 1
    device: str = "auto"
    batch: int | None = None
    bucket_s: float = 0.02
    type: str = KIND

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ConfigError(
                f"tokenizer.encoder must be one of {sorted(ENCODERS)}, got {self.encoder!r}"
            )
        if self.type != KIND:
            raise ConfigError(f"tokenizer.type must be {KIND!r} here, got {self.type!r}")
        if self.n_units < 2:
            raise ConfigError(f"tokenizer.n_units must be >= 2, got {self.n_units}")
        if not self.prior_count >= 0:
            raise ConfigError(f"tokenizer.prior_count must be >= 0, got {self.prior_count}")
        if self.threads < 1:
            raise ConfigError(f"tokenizer.threads must be >= 1, got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"tokenizer.device must be auto, cpu or cuda, got {self.device!r}")
        object.__setattr__(self, "summary_layers", tuple(int(k) for k in self.summary_layers))
        weights = ENCODERS[self.encoder]
        known = {depth for depth, _ in weights.truncated_sha256} | {weights.layers}
        if not set(self.summary_layers) <= known or len(set(self.summary_layers)) != len(
            self.summary_layers
        ):
            raise ConfigError(
                f"tokenizer.summary_layers must be distinct blocks of {sorted(known)}, got "
                f"{list(self.summary_layers)}"
            )
        if self.batch is not None and self.batch < 1:
            raise ConfigError(f"tokenizer.batch must be >= 1 or null, got {self.batch}")
        states = self.bucket_s * STATE_RATE_HZ
        if not (states >= 1 and abs(states - round(states)) < 1e-6):
            raise ConfigError(
                f"tokenizer.bucket_s must be a positive multiple of 0.02 s, got {self.bucket_s}"
            )

    @property
    def bucket_frames(self) -> int:
        """:attr:`bucket_s` in mel frames (two per encoder state)."""
        return 2 * round(self.bucket_s * STATE_RATE_HZ)

    @property
    def rate_hz(self) -> float:
        return UNIT_RATE_HZ

    def summary_dim(self, width: int) -> int:
        pooled = 2 * width * max(1, len(self.summary_layers))
        return pooled + (2 * PROSODY_MELS + 10 if self.prosody else 0)


@dataclass(frozen=True)
class EncodedWaves:
    """What :meth:`EncoderTokenizer.block_features` gives for several waves: each wave's unit
    frames (``[units, width]``, standardised) and its raw (absolute) summary."""

    frames: list[np.ndarray]
    summaries: list[np.ndarray]


class SummaryLevels:
    """Each speaker's summary reference over a conversation (counted before any is used)."""

    def __init__(self, mean: np.ndarray, var: np.ndarray, prior_count: float) -> None:
        self._mean, self._var, self._k = mean, var, prior_count
        self._sums: dict[Hashable, list] = {}

    def add_stacked(self, keys: Sequence[Hashable], feats: EncodedWaves, counts: list[int]) -> None:
        """Count each wave's summary into its speaker's reference (``counts`` unused: the
        interface of ``ConversationLevels``)."""
        for key, summary in zip(keys, feats.summaries, strict=True):
            acc = self._sums.setdefault(key, [0, np.zeros_like(summary), np.zeros_like(summary)])
            acc[0] += 1
            acc[1] += summary
            acc[2] += summary * summary

    def standardise(self, key: Hashable, summary: np.ndarray) -> np.ndarray:
        """``summary`` relative to ``key``'s speaker: shrunk mean removed, shrunk spread divided."""
        n, total, squares = self._sums.get(key, (0, 0.0, 0.0))
        k = self._k
        if n + k == 0:
            return summary - summary
        # pooled moments of the speaker's n utterances and k pseudo utterances of the corpus
        mean = (total + k * self._mean) / (n + k)
        second = (squares + k * (self._var + self._mean**2)) / (n + k)
        var = np.maximum(second - mean**2, 1e-6 * self._var + 1e-12)
        return (summary - mean) / np.sqrt(var)


class EncoderTokenizer:
    """Units and speaker-relative summaries from the frozen encoder (module docstring).

    Args:
        config: the shape.
        centroids: ``[n_units, width]`` k-means centroids of standardised unit frames.
        frame_norm: ``[2, width]`` the training frames' mean and standard deviation.
        summary_norm: ``[2, summary_dim]`` the training summaries' mean and variance (the
            speakers' shrinkage target).
        encoder: a built encoder to share (None: built from the config on first use, behind
            an :class:`EncoderQueue` that every thread tokenizing with this tokenizer shares).
    """

    kind = KIND
    speaker_relative = True
    speaker_reference = "conversation"
    summaries = False  # set by a model with an acoustic head

    def __init__(
        self,
        config: EncoderTokenizerConfig,
        centroids: torch.Tensor,
        frame_norm: torch.Tensor,
        summary_norm: torch.Tensor,
        *,
        encoder: SpeechEncoder | EncoderQueue | None = None,
    ) -> None:
        width = encoder_weights(config.encoder).width
        expected = {
            "centroids": (config.n_units, width),
            "frame_norm": (2, width),
            "summary_norm": (2, config.summary_dim(width)),
        }
        given = {"centroids": centroids, "frame_norm": frame_norm, "summary_norm": summary_norm}
        for name, shape in expected.items():
            if tuple(given[name].shape) != shape:
                raise ConfigError(f"{name} must have shape {shape}, got {tuple(given[name].shape)}")
        self.config = config
        self.centroids = centroids.float().contiguous()
        self.frame_norm = frame_norm.float().contiguous()
        self.summary_norm = summary_norm.double().contiguous()
        self._encoder = encoder
        self._summary_encoders: dict[int, SpeechEncoder | EncoderQueue] = {}
        self._build_lock = threading.Lock()  # concurrent first calls build one encoder

    def __getstate__(self) -> dict:
        # the built encoders (CTranslate2 models) do not pickle; a copy builds its own
        state = {**self.__dict__, "_encoder": None, "_summary_encoders": {}}
        del state["_build_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _build_lock=threading.Lock())

    @property
    def encoder(self) -> SpeechEncoder | EncoderQueue:
        """The encoder, built on first use (loading a model folder does not load it) behind
        the queue that batches what concurrent callers have pending."""
        with self._build_lock:
            if self._encoder is None:
                self._encoder = EncoderQueue(
                    SpeechEncoder(
                        encoder_weights(self.config.encoder),
                        device=self.config.device,
                        threads=self.config.threads,
                        batch=self.config.batch,
                        bucket_frames=self.config.bucket_frames,
                    )
                )
        return self._encoder

    def summary_encoder(self, depth: int) -> SpeechEncoder | EncoderQueue:
        """The encoder truncated to ``depth`` blocks, behind its own queue (the whole one: the
        units' encoder)."""
        weights = encoder_weights(self.config.encoder)
        if depth == weights.layers:
            return self.encoder
        with self._build_lock:
            if depth not in self._summary_encoders:
                self._summary_encoders[depth] = EncoderQueue(
                    SpeechEncoder(
                        weights,
                        device=self.config.device,
                        threads=self.config.threads,
                        batch=self.config.batch,
                        bucket_frames=self.config.bucket_frames,
                        depth=depth,
                    )
                )
        return self._summary_encoders[depth]

    def use_encoder(self, encoder: SpeechEncoder | EncoderQueue) -> None:
        """Encode through ``encoder`` from now on (e.g. one built with other batch settings)."""
        self._encoder = encoder

    @property
    def rate_hz(self) -> float:
        return UNIT_RATE_HZ

    @property
    def vocab_size(self) -> int:
        return self.config.n_units

    @property
    def fingerprint(self) -> str:
        """sha256 of the shape, the encoder's pinned hash and the fitted tensors."""
        fields = asdict(self.config)
        # where and how it runs does not change the codes' meaning (the default batching
        # changes no state on CPU; a padded bucket does, docs/encoder_batching.md)
        for runtime in ("threads", "device", "batch", "bucket_s"):
            del fields[runtime]
        if not fields["summary_layers"]:  # the final states: v10's fingerprint stays its own
            del fields["summary_layers"]
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
        digest.update(encoder_weights(self.config.encoder).sha256.encode())
        for tensor in (self.centroids, self.frame_norm, self.summary_norm):
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()

    def block_features(self, waves: Sequence[np.ndarray]) -> tuple[EncodedWaves, list[int]]:
        """Each wave's standardised unit frames and raw summary, and its unit count."""
        frames, summaries = [], []
        finals = self.encoder.states(waves)
        layers = [self.summary_encoder(k).states(waves) for k in self.config.summary_layers]
        for i, (wave, states) in enumerate(zip(waves, finals, strict=True)):
            units = _pairs(states)
            frames.append((units - self.frame_norm[0].numpy()) / self.frame_norm[1].numpy())
            pooled = [layer[i] for layer in layers] or [states]
            summaries.append(raw_summary(wave, pooled, self.config.prosody))
        return EncodedWaves(frames, summaries), [len(f) for f in frames]

    def new_conversation_levels(self) -> SummaryLevels:
        """Empty per-speaker references for one conversation."""
        norm = self.summary_norm.numpy()
        return SummaryLevels(norm[0], norm[1], self.config.prior_count)

    def quantize(
        self,
        feats: EncodedWaves,
        counts: list[int],
        *,
        levels: SummaryLevels | None = None,
        speakers: Sequence[Hashable] | None = None,
    ) -> list[np.ndarray]:
        """Each wave's units (nearest centroid of every standardised frame)."""
        return [self._units(frames) for frames in feats.frames]

    def quantize_with_summaries(
        self,
        feats: EncodedWaves,
        counts: list[int],
        *,
        levels: SummaryLevels | None = None,
        speakers: Sequence[Hashable] | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """:meth:`quantize`'s units and each wave's summary relative to its speaker (without
        ``levels``: each wave against the corpus reference alone)."""
        if levels is None or speakers is None:
            levels, speakers = self.new_conversation_levels(), [None] * len(feats.summaries)
        summaries = [
            levels.standardise(key, s).astype(np.float32)
            for key, s in zip(speakers, feats.summaries, strict=True)
        ]
        return self.quantize(feats, counts), summaries

    def encode(self, wave: np.ndarray) -> np.ndarray:
        return self.encode_batch([wave])[0]

    def encode_batch(self, waves: Sequence[np.ndarray], **_: object) -> list[np.ndarray]:
        """The units of several waves (speaker references do not change units)."""
        feats, counts = self.block_features(waves)
        return self.quantize(feats, counts)

    def _units(self, frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
        # squared distances by expansion: one matmul, no [units, n_units, width] tensor
        d = (x * x).sum(1, keepdim=True) - 2 * x @ self.centroids.T + (self.centroids**2).sum(1)
        return d.argmin(dim=1).to(torch.int64).numpy()

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``speech_tokenizer.json`` and ``.safetensors`` into ``folder``."""
        from dpm_worker.speech.tokenizer import TOKENIZER_CONFIG, TOKENIZER_WEIGHTS

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / TOKENIZER_WEIGHTS
        save_file(
            {
                "centroids": self.centroids,
                "frame_norm": self.frame_norm,
                "summary_norm": self.summary_norm,
            },
            str(weights),
        )
        config = folder / TOKENIZER_CONFIG
        config.write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        return [config, weights]


def _pairs(states: np.ndarray) -> np.ndarray:
    """50 Hz states -> 25 Hz unit frames (pairs averaged; an odd last state stands alone)."""
    even = len(states) - len(states) % 2
    units = states[:even].reshape(-1, 2, states.shape[1]).mean(axis=1)
    if even < len(states):
        units = np.concatenate([units, states[even:]], axis=0)
    return units


def raw_summary(wave: np.ndarray, layers: Sequence[np.ndarray], prosody: bool) -> np.ndarray:
    """An utterance's absolute float64 summary: each layer's states' mean and spread, and
    (``prosody``) the pooled statistics of its fast block features."""
    pooled = [
        stat
        for states in layers
        for stat in (states.mean(axis=0, dtype=np.float64), states.std(axis=0, dtype=np.float64))
    ]
    if prosody:
        block = int(SAMPLE_RATE / UNIT_RATE_HZ)
        n = block_count(len(wave), block)
        padded = np.zeros(n * block, dtype=np.float32)
        padded[: len(wave)] = wave
        feats = compute_block_features(
            torch.from_numpy(padded),
            sample_rate=SAMPLE_RATE,
            rate_hz=UNIT_RATE_HZ,
            n_mels=PROSODY_MELS,
        )
        pooled.append(utterance_summary(feats))
    return np.concatenate(pooled)
