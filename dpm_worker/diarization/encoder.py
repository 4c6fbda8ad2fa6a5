"""The speaker encoder: resemblyzer's pretrained GE2E network, in the project's own code.

The weights come from the pinned PyPI wheel ``resemblyzer==0.1.4`` (Apache-2.0), installed
with ``pip install --no-deps`` because only its ``pretrained.pt`` is used: the package is never
imported (its import pulls librosa and webrtcvad). The file is found through
``importlib.util.find_spec``, its sha256 is checked, and it is read with ``weights_only=True``.

Facts taken from resemblyzer's ``hparams.py`` and ``audio.py`` (the code here is our own):
16 kHz audio normalized to -30 dBFS; 40 mel bands of the *power* spectrum (not log) from a
400-sample (25 ms) Hann window every 160 samples (10 ms), centred frames, Slaney mel scale and
area normalization (librosa's defaults); a 3-layer LSTM of width 256 whose last hidden state
goes through a linear layer, a ReLU and an L2 norm (256-d, trained on 1.6 s partials).
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dpm_worker.errors import ModelError

WHEEL = "resemblyzer==0.1.4"
WEIGHTS_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
TARGET_DBFS = -30.0
WIDTH = 256
LAYERS = 3


class SpeakerEncoder(nn.Module):
    """GE2E speaker encoder: mel frames ``[B, T, 40]`` -> unit embeddings ``[B, 256]``."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, WIDTH, LAYERS, batch_first=True)
        self.linear = nn.Linear(WIDTH, WIDTH)

    def forward(self, mels: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Embed a batch; ``lengths`` (frames per item) lets items of unequal length share it."""
        if lengths is not None:
            packed = nn.utils.rnn.pack_padded_sequence(
                mels, lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            _, (hidden, _) = self.lstm(packed)
        else:
            _, (hidden, _) = self.lstm(mels)
        raw = torch.relu(self.linear(hidden[-1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)


def weights_path() -> Path:
    """Where the wheel put ``pretrained.pt``, found without importing the package.

    Raises:
        ModelError: the wheel is not installed.
    """
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the speaker encoder's weights need the wheel {WHEEL}: "
            f"pip install --no-deps {WHEEL} (make setup does)",
            "resemblyzer/pretrained.pt",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


@lru_cache(maxsize=1)
def load_speaker_encoder() -> SpeakerEncoder:
    """The pretrained encoder in eval mode on CPU, loaded once per process.

    Raises:
        ModelError: the wheel is missing, or its weights' hash or keys are not the pinned ones.
    """
    path = weights_path()
    if not path.is_file():
        raise ModelError(f"{WHEEL} is installed without its pretrained.pt", str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise ModelError(
            f"speaker encoder weights have sha256 {digest}, expected {WEIGHTS_SHA256} ({WHEEL})",
            str(path),
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model_state") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ModelError("checkpoint has no model_state", str(path))
    # The checkpoint also holds GE2E's training-only similarity scale and bias.
    wanted = {k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))}
    encoder = SpeakerEncoder()
    try:
        encoder.load_state_dict(wanted, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"speaker encoder weights do not fit: {exc}", str(path)) from None
    return encoder.eval()


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """Slaney-scale triangular filters with area normalization, ``[40, N_FFT // 2 + 1]``."""
    f_sp, min_log_hz, min_log_mel = 200.0 / 3, 1000.0, 15.0
    logstep = np.log(6.4) / 27.0

    def to_mel(hz: np.ndarray) -> np.ndarray:
        log_part = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
        return np.where(hz >= min_log_hz, log_part, hz / f_sp)

    def to_hz(mel: np.ndarray) -> np.ndarray:
        log_part = min_log_hz * np.exp(logstep * (mel - min_log_mel))
        return np.where(mel >= min_log_mel, log_part, f_sp * mel)

    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = to_hz(np.linspace(0.0, float(to_mel(np.array(SAMPLE_RATE / 2.0))), N_MELS + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def mel_frames(samples: np.ndarray) -> np.ndarray:
    """Mel power frames ``[n // 160 + 1, 40]`` of 16 kHz mono samples, frame ``t`` centred on
    sample ``160 t`` (zero padding at the ends); scale them by :func:`loudness_gain`."""
    audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if audio.numel() == 0:
        return np.zeros((0, N_MELS), np.float32)
    spectrum = torch.stft(
        audio,
        N_FFT,
        HOP,
        window=_hann(),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    power = spectrum.real.square() + spectrum.imag.square()  # [201, frames]
    return (torch.from_numpy(mel_filters()) @ power).T.contiguous().numpy()


@lru_cache(maxsize=1)
def _hann() -> torch.Tensor:
    return torch.hann_window(N_FFT, periodic=True)


def loudness_gain(samples: np.ndarray) -> float:
    """The power gain that brings ``samples`` to -30 dBFS RMS (mel frames scale by it)."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    if rms <= 1e-8:
        return 1.0
    return float((10 ** (TARGET_DBFS / 20) / rms) ** 2)


def embed_frames(
    encoder: SpeakerEncoder, pieces: list[np.ndarray], batch_size: int = 64
) -> np.ndarray:
    """Embed mel-frame pieces ``[T_i, 40]`` (each already loudness-scaled): ``[n, 256]``."""
    out = np.zeros((len(pieces), WIDTH), np.float32)
    order = sorted(range(len(pieces)), key=lambda i: pieces[i].shape[0])
    with torch.inference_mode():
        for at in range(0, len(order), batch_size):
            idx = order[at : at + batch_size]
            lengths = [max(1, pieces[i].shape[0]) for i in idx]
            batch = np.zeros((len(idx), max(lengths), N_MELS), np.float32)
            for row, i in enumerate(idx):
                batch[row, : pieces[i].shape[0]] = pieces[i]
            tensor = torch.from_numpy(batch)
            if len(set(lengths)) == 1:
                emb = encoder(tensor)
            else:
                emb = encoder(tensor, torch.tensor(lengths))
            out[idx] = emb.numpy()
    return out
