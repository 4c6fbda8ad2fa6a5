"""Training device, precision, gradient accumulation and checkpointing on tiny models (CPU)."""

import dataclasses

import pytest
import torch

from dpm_worker.errors import ConfigError
from dpm_worker.model import EmotionModel
from dpm_worker.training import (
    TrainConfig,
    autocast_dtype,
    build_stream,
    place_for_training,
    resolve_device,
    train,
)
from tests.unit.training.test_training import VOCAB, utterances

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BASE = TrainConfig(
    window_tokens=48, batch_size=2, epochs=1.0, warmup_steps=0, aux_previous=1, threads=1,
    device="cpu",
)  # fmt: skip


def streams():
    return [build_stream(VOCAB, f"c{i}", utterances(16, seed=i), aux_previous=1) for i in range(3)]


def model() -> EmotionModel:
    m = EmotionModel.random(VOCAB, seed=0, max_context=48)
    m.model.requires_grad_(True)
    return m


def test_device_and_precision_choices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert autocast_dtype(torch.device("cpu"), "auto") is None
    assert autocast_dtype(torch.device("cuda"), "auto") is torch.bfloat16
    assert autocast_dtype(torch.device("cpu"), "bf16") is torch.bfloat16
    with pytest.raises(ConfigError, match="tpu"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="grad_accum_steps"):
        TrainConfig(grad_accum_steps=0)
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")


def test_frozen_weights_take_the_autocast_dtype_trained_ones_stay_fp32():
    m = model()
    m.model.model.layers[0].requires_grad_(False)  # a frozen part, as a LoRA base's body
    placed = place_for_training(m, torch.device("cpu"), torch.bfloat16, gradient_checkpointing=True)
    dtypes = {p.dtype for p in placed.model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in placed.model.parameters() if not p.requires_grad}
    assert dtypes == {torch.float32} and frozen == {torch.bfloat16}
    assert placed.model.is_activation_checkpointing
    history = train(placed, streams(), dataclasses.replace(BASE, precision="bf16"), progress=False)
    assert history and all(torch.isfinite(torch.tensor(h["L_a"])) for h in history)


def test_gradient_accumulation_counts_effective_batches():
    plain = train(model(), streams(), BASE, progress=False)
    accumulated = train(
        model(), streams(), dataclasses.replace(BASE, grad_accum_steps=2), progress=False
    )
    # an epoch covers the tokens once at the effective batch (2 x 2 windows per step)
    assert accumulated[-1]["step"] * 2 in (plain[-1]["step"], plain[-1]["step"] + 1)
