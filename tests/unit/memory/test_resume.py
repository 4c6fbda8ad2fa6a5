"""A conversation's state as named tensors and a JSON header, stored and resumed exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpm_worker.errors import ConfigError
from dpm_worker.memory import ConversationState, LabelingConfig, MemoryConfig, SlotLabeler
from dpm_worker.model import EmotionModel
from dpm_worker.tables import CheckpointKey, CheckpointStore
from dpm_worker.utterance import Utterance

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# prior: the product's default (speaker scope, SGD). audio: the paper's variant, with AdamW so
# that the optimizer's moments and step count must survive the checkpoint too.
CONFIGS = {
    "prior": LabelingConfig(mode="dpm", window_tokens=32),
    "audio": LabelingConfig(
        mode="dpm",
        window_tokens=32,
        memory=MemoryConfig(
            write_target="audio", optimizer="adamw", lr=1e-2, warmup_steps=3, scope="speaker"
        ),
    ),
}
KEY = CheckpointKey("random-0", "cfg", "inputs")


def conversation(n: int, seed: int = 3) -> list[Utterance]:
    rng = np.random.default_rng(seed)
    speakers = ["ann", "bob", "cy"]
    return [
        Utterance(
            "conv",
            i,
            speakers[int(rng.integers(0, 3))],
            audio_ids=rng.integers(0, 32, size=12).astype(np.int64),
        )
        for i in range(n)
    ]


def label_all(labeler: SlotLabeler, utts: list[Utterance], resume=None, stop_at=None):
    """One conversation through the driver; stops (returns its labeler) after ``stop_at``."""
    labeler.admit("conv", utts, resume)
    while not labeler.finished("conv"):
        if stop_at is not None and labeler.position("conv") == stop_at:
            return None
        labeler.advance()
    return labeler.release("conv")


def probs(rows) -> np.ndarray:
    return np.stack([r.probs for r in rows])


@pytest.mark.parametrize("target", sorted(CONFIGS))
def test_resume_from_stored_checkpoint_equals_uninterrupted_run(tmp_path, target) -> None:
    config = CONFIGS[target]
    utts = conversation(16)
    whole = label_all(SlotLabeler(EmotionModel.random(seed=0), config, 1), utts)
    assert np.ptp(probs(whole)[:, 0]) > 1e-3  # the memory moves the reads

    store = CheckpointStore(str(tmp_path), "run1")
    first = SlotLabeler(EmotionModel.random(seed=0), config, 2)
    assert label_all(first, utts, stop_at=9) is None  # the actor dies after utterance 9
    state = first.export_state("conv")
    tensors, header = state.to_tensors()
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    store.save("conv", KEY, state.position, tensors, header)
    del first

    # A fresh process: a new model object and memory, nothing shared with the first.
    loaded = store.load("conv", KEY, ConversationState.from_tensors)
    assert loaded is not None and loaded.position == 9
    assert sum(k.endswith(".steps") for k in loaded.tensors) == len(loaded.speaker_slots) == 3
    resumed = label_all(SlotLabeler(EmotionModel.random(seed=0), config, 3), utts, loaded)
    assert [r.utterance.utterance_index for r in resumed] == list(range(16))
    np.testing.assert_allclose(probs(resumed), probs(whole), rtol=0, atol=1e-6)
    assert [r.emotion for r in resumed] == [r.emotion for r in whole]


def test_state_from_tensors_rejects_what_is_no_state() -> None:
    state = ConversationState(
        2, {"a": 0}, [5, 6], np.ones((2, 4), np.float32), [1.0, 2.0], [3, 4], {}
    )
    tensors, header = state.to_tensors()
    back = ConversationState.from_tensors(tensors, header)
    assert (back.position, back.speaker_slots, back.history) == (2, {"a": 0}, [5, 6])
    assert back.ms == [1.0, 2.0] and back.context_tokens == [3, 4] and back.tensors == {}
    with pytest.raises(ConfigError, match="rows of shape"):
        ConversationState.from_tensors(tensors, {**header, "position": 3})
    with pytest.raises(ConfigError, match="missing"):
        ConversationState.from_tensors({"history": tensors["history"]}, header)
