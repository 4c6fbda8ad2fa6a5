"""The frozen pretrained speech encoder: Whisper's encoder run by CTranslate2.

The field's speech-LLMs (Qwen2-Audio, SALMONN) hear through Whisper's encoder, pretrained on
hundreds of thousands of hours; a probe on its pooled final states read RAVDESS actors it never
heard at 0.85-0.86 UA where every hand-made descriptor stopped near 0.77 (DESIGN section 4).

- Input: float32 mono 16 kHz waves. Whisper's log-mel (400-sample Hann window, 160 hop, 80 Slaney
  mel bands, log10 clipped 8 decades below the wave's maximum, ``(x + 4) / 4``) is computed here
  in torch, per wave and unpadded: Whisper pads to 30 s, which would make every state depend on
  a half-minute of silence and cost 30 s of compute for a 3 s turn; CTranslate2's ``encode``
  takes unpadded inputs (T mel frames -> T / 2 states, 50 Hz).
- Waves longer than 30 s (the encoder's positions) are encoded in 30 s pieces, joined.
- Batching (``batch`` > 1): CTranslate2 encodes a batch of equal-length inputs, and Whisper's
  encoder has no attention mask, so pieces are grouped by a length bucket (``bucket_frames``,
  rounded up) and padded at the end, to the longest of their batch, with the log-mel of silence
  as Whisper's feature extractor pads to 30 s (zeros in the wave are the clipped floor,
  ``max - 2`` after scaling); the padding's states are dropped. Padding is not free: the real
  frames attend to the silence, and 20 ms of it moves a 3 s wave's states by ~10%
  (docs/encoder_batching.md). ``bucket_frames = 2`` batches equal lengths only, whose rows
  are encoded independently: the states each piece has alone, bitwise (measured, CPU int8).
- Device: int8 on CPU; bfloat16 (compute capability 8+) or float16 on CUDA. The encoder is
  built with ``intra_threads`` set, which also sets torch's thread count in this process, so
  torch's count is put back after it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dpm_worker.errors import ConfigError, ModelError
from dpm_worker.speech.encoder_weights import EncoderWeights, encoder_folder, truncated_folder

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
STATE_RATE_HZ = SAMPLE_RATE / HOP / 2  # 50 states per second
MAX_FRAMES = 3000  # 30 s of mel frames: the encoder's 1500 positions
MIN_FRAMES = 4  # two states, one 25 Hz unit


def mel_filters(n_mels: int) -> torch.Tensor:
    """``[n_mels, N_FFT // 2 + 1]`` Slaney-scale mel filters over 0-8 kHz (Whisper's)."""
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(np.ascontiguousarray(bank.T)).float()


def silence_level(mel: np.ndarray) -> float:
    """The log-mel value of digital silence in ``mel``'s wave: the floor 8 decades below its
    loudest bin (or 1e-10 when that is higher), after Whisper's ``(x + 4) / 4``."""
    return max(float(mel.max()) - 2.0, -1.5)


def bucket_length(frames: int, bucket_frames: int) -> int:
    """``frames`` rounded up to a multiple of ``bucket_frames`` (at most :data:`MAX_FRAMES`)."""
    return min(MAX_FRAMES, -(-frames // bucket_frames) * bucket_frames)


def log_mel(wave: np.ndarray, filters: torch.Tensor) -> np.ndarray:
    """Whisper's log-mel of one unpadded wave: ``[n_mels, frames]`` float32, frames even and at
    least :data:`MIN_FRAMES` (a shorter wave is zero-padded to that)."""
    samples = torch.as_tensor(np.ascontiguousarray(wave, dtype=np.float32))
    if samples.ndim != 1:
        raise ConfigError(
            f"the encoder expects a mono 1-D waveform, got shape {tuple(samples.shape)}"
        )
    need = MIN_FRAMES * HOP
    if samples.shape[0] < need:
        samples = torch.nn.functional.pad(samples, (0, need - samples.shape[0]))
    spec = torch.stft(samples, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)[
        :, :-1
    ]
    mel = filters @ spec.abs().square()
    logs = mel.clamp(min=1e-10).log10()
    logs = torch.maximum(logs, logs.max() - 8.0)
    logs = (logs + 4.0) / 4.0
    frames = logs.shape[1] - logs.shape[1] % 2
    return logs[:, :frames].numpy()


def pick_batch(device: str) -> int:
    """Pieces per encoder call when the config does not say: 1 on CPU, where int8 batches of
    equal length run at 0.6-0.9x the speed of one piece at a time (``dpm bench encoder_batch``:
    the GEMMs of one 3-5 s piece are already as large as the kernels want), 16 on CUDA."""
    return 1 if device == "cpu" else 16


def pick_compute_type(device: str) -> str:
    """int8 on CPU; bfloat16 where the GPU supports it, else float16."""
    if device == "cpu":
        return "int8"
    major, _ = torch.cuda.get_device_capability()
    return "bfloat16" if major >= 8 else "float16"


class SpeechEncoder:
    """Whisper's encoder, frozen: waves -> ``[T, width]`` float32 states at 50 Hz.

    Args:
        weights: which pinned encoder.
        device: ``cpu``, ``cuda`` or ``auto`` (CUDA when available).
        threads: CPU threads of the encoder (the worker's share of the machine).
        cache_dir: where the joined weights are kept (``encoder_weights.default_cache_dir``).
        depth: run only the first ``depth`` blocks (then the final layer norm) of a pinned
            truncation (``encoder_weights.truncated_folder``); None: the whole encoder.
        batch: most pieces per ``encode`` call (1: one at a time, unpadded; None: by device,
            :func:`pick_batch`).
        bucket_frames: pieces whose lengths round up to the same multiple of this many mel
            frames (10 ms each; even) are batched together, each padded to the longest of its
            batch (2: equal lengths only, nothing padded).

    Raises:
        ModelError: the weights are missing or fail their hash (``encoder_folder``), or
            CTranslate2 is not installed.
    """

    def __init__(
        self,
        weights: EncoderWeights,
        *,
        device: str = "auto",
        threads: int = 1,
        cache_dir: str | Path | None = None,
        depth: int | None = None,
        batch: int | None = None,
        bucket_frames: int = 2,
    ) -> None:
        if batch is not None and batch < 1:
            raise ConfigError(f"encoder batch must be >= 1, got {batch}")
        if bucket_frames < 2 or bucket_frames % 2:
            raise ConfigError(f"encoder bucket_frames must be even and >= 2, got {bucket_frames}")
        # CTranslate2 brings its own OpenMP runtime; its idle threads spin by default and slow
        # every torch op in the process 40-80x when torch runs more than one thread (measured).
        # Passive waiting is read when its runtime loads, i.e. at this import.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import ctranslate2
        except ImportError as exc:  # pragma: no cover - a dependency of the project
            raise ModelError(
                "the speech encoder needs ctranslate2: pip install ctranslate2"
            ) from exc
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"encoder device must be cpu, cuda or auto, got {device!r}")
        self.weights = weights
        self.batch = pick_batch(device) if batch is None else batch
        self.bucket_frames = bucket_frames
        self.device = device
        self.compute_type = pick_compute_type(device)
        self.depth = weights.layers if depth is None else depth
        self.folder = (
            encoder_folder(weights, cache_dir)
            if self.depth == weights.layers
            else truncated_folder(weights, self.depth, cache_dir)
        )
        torch_threads = torch.get_num_threads()
        self._model = ctranslate2.models.Whisper(
            str(self.folder),
            device=device,
            compute_type=self.compute_type,
            intra_threads=max(1, int(threads)),
        )
        torch.set_num_threads(torch_threads)
        self._ct2 = ctranslate2
        self._filters = mel_filters(weights.n_mels)

    @property
    def width(self) -> int:
        return self.weights.width

    def states(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each wave's encoder states, ``[frames // 2, width]`` float32 (50 Hz).

        A wave over 30 s is encoded in 30 s pieces; pieces are batched by length bucket
        (module docstring).
        """
        return self.encode_mels([self.log_mel(wave) for wave in waves])

    def log_mel(self, wave: np.ndarray) -> np.ndarray:
        """:func:`log_mel` with this encoder's filters."""
        return log_mel(wave, self._filters)

    def encode_mels(self, mels: Sequence[np.ndarray]) -> list[np.ndarray]:
        """:meth:`states` of waves whose log-mels are given (``[n_mels, frames]``, even)."""
        pieces, owners, floors = [], [], []
        for n, mel in enumerate(mels):
            floor = silence_level(mel)
            for start in range(0, mel.shape[1], MAX_FRAMES):
                if mel.shape[1] - start >= 2:
                    pieces.append(mel[:, start : start + MAX_FRAMES])
                    owners.append(n)
                    floors.append(floor)
        states = self._encode_pieces(pieces, floors)
        joined: list[list[np.ndarray]] = [[] for _ in mels]
        for owner, piece_states in zip(owners, states, strict=True):
            joined[owner].append(piece_states)
        return [np.concatenate(parts, axis=0) for parts in joined]

    def _encode_pieces(self, pieces: list[np.ndarray], floors: list[float]) -> list[np.ndarray]:
        """Each piece's states: the pieces of one length bucket encoded ``batch`` at a time,
        longest first, each padded with silence to the longest of its batch; the padding's
        states dropped."""
        if self.batch == 1:
            return [self._encode(piece[None])[0] for piece in pieces]
        groups: dict[int, list[int]] = {}
        for n, piece in enumerate(pieces):
            groups.setdefault(bucket_length(piece.shape[1], self.bucket_frames), []).append(n)
        out: list[np.ndarray | None] = [None] * len(pieces)
        for bucket in sorted(groups, reverse=True):
            members = sorted(groups[bucket], key=lambda n: -pieces[n].shape[1])
            for first in range(0, len(members), self.batch):
                chunk = members[first : first + self.batch]
                length = pieces[chunk[0]].shape[1]  # the longest: padded to it, not the bucket
                batch = np.empty((len(chunk), pieces[0].shape[0], length), dtype=np.float32)
                for row, n in enumerate(chunk):
                    frames = pieces[n].shape[1]
                    batch[row, :, :frames] = pieces[n]
                    batch[row, :, frames:] = floors[n]
                for n, states in zip(chunk, self._encode(batch), strict=True):
                    out[n] = states[: pieces[n].shape[1] // 2]
        return out  # type: ignore[return-value]

    def _encode(self, mels: np.ndarray) -> np.ndarray:
        """``[batch, n_mels, frames]`` -> ``[batch, frames // 2, width]`` float32 states."""
        view = self._ct2.StorageView.from_array(np.ascontiguousarray(mels, dtype=np.float32))
        return np.asarray(self._model.encode(view, to_cpu=True), dtype=np.float32)
