"""The pretrained speech encoder on CUDA (bf16 or fp16) against the CPU int8 run on real speech,
and its speed.

Skipped without CUDA. ``infra/gpu_check.sh --dry-run`` runs the speed test on CPU (int8) with a
floor that only catches a hang; on a GPU it records the bf16 (or fp16) encoder's figure.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from dpm_worker.speech import WHISPER_BASE, SpeechEncoder

pytestmark = pytest.mark.gpu

ON_GPU = torch.cuda.is_available()
AMI = Path(__file__).parents[1] / "fixtures" / "real_speech" / "dev00.flac"


def ami_wave(seconds: float) -> np.ndarray:
    audio, rate = sf.read(AMI, dtype="float32", always_2d=True)
    wave = soxr.resample(audio.mean(axis=1), rate, 16_000).astype(np.float32)
    return wave[: int(16_000 * seconds)]


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA")
def test_cuda_states_agree_with_cpu_int8():
    wave = ami_wave(8.0)
    gpu = SpeechEncoder(WHISPER_BASE, device="cuda")
    assert gpu.compute_type in ("bfloat16", "float16")
    cpu = SpeechEncoder(WHISPER_BASE, device="cpu")
    a, b = gpu.states([wave])[0], cpu.states([wave])[0]
    assert a.shape == b.shape == (400, 512)
    pooled = a.mean(0), b.mean(0)
    assert np.dot(*pooled) / np.linalg.norm(pooled[0]) / np.linalg.norm(pooled[1]) > 0.999


def test_encoder_speed(record_property) -> None:
    # Utterance-sized pieces (4 s) of real speech, one call each as the tokenizer makes them.
    # GPU (bf16 where supported): whisper-base must encode >= 50 s of audio per second (a CPU
    # core does about 20-40 in int8); CPU dry run: a floor that only catches a hang.
    encoder = SpeechEncoder(WHISPER_BASE, device="cuda" if ON_GPU else "cpu")
    pieces = [ami_wave(30.0)[i * 64_000 : (i + 1) * 64_000] for i in range(7)]
    encoder.states(pieces[:1])  # warm-up: kernels, allocator
    start = time.perf_counter()
    for piece in pieces:
        encoder.states([piece])
    rate = 7 * 4.0 / (time.perf_counter() - start)
    record_property("audio_s_per_s", round(rate, 1))
    record_property("bf16", float(encoder.compute_type == "bfloat16"))
    print(f"\nencoder: {rate:.1f} audio s/s ({encoder.device}, {encoder.compute_type})")
    assert rate >= (50.0 if ON_GPU else 0.5)
