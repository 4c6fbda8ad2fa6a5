"""The pretrained speech encoder on CUDA (bf16 or fp16) against the CPU int8 run on real speech.

Skipped without CUDA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from dpm_worker.speech import WHISPER_BASE, SpeechEncoder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

AMI = Path(__file__).parents[1] / "fixtures" / "real_speech" / "dev00.flac"


def test_cuda_states_agree_with_cpu_int8():
    audio, rate = sf.read(AMI, dtype="float32", always_2d=True)
    wave = soxr.resample(audio.mean(axis=1), rate, 16_000).astype(np.float32)[: 16_000 * 8]
    gpu = SpeechEncoder(WHISPER_BASE, device="cuda")
    assert gpu.compute_type in ("bfloat16", "float16")
    cpu = SpeechEncoder(WHISPER_BASE, device="cpu")
    a, b = gpu.states([wave])[0], cpu.states([wave])[0]
    assert a.shape == b.shape == (400, 512)
    pooled = a.mean(0), b.mean(0)
    assert np.dot(*pooled) / np.linalg.norm(pooled[0]) / np.linalg.norm(pooled[1]) > 0.999
