"""What a training run leaves: the validation scores per epoch and the saved model folder.

Shared by the single-process recipe (``backbone``), Ray Train (``distributed``) and the
memory-loop trainer (``memory_loop``); each imports this module, none of them another's
recipe (``backbone`` chooses between the other two).
"""

from __future__ import annotations

import dataclasses
import json

from dpm_worker.errors import ConfigError
from dpm_worker.model import EmotionModel, save_model
from dpm_worker.training import score_stream, score_stream_windows, summarize_scores

TRAINING_RECORD = "training.json"


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """LoRA of the base-model regime (the paper: r=64, alpha=64, all linear layers)."""

    r: int = 64
    alpha: int = 64
    dropout: float = 0.0
    merge: bool = True

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1 or not 0 <= self.dropout < 1:
            raise ConfigError(f"invalid lora settings: {self}")


def validate(model: EmotionModel, streams, window: int) -> dict:
    """Utterance-mode (exact) and windowed (W/2..W context) scores on the validation split."""
    labels = model.vocab.labels
    utt = [score_stream(model, s, "utterance", 0, batch_size=32) for s in streams]
    win = [score_stream_windows(model, s, window) for s in streams]
    out = {}
    for name, probs in (("utterance", utt), ("window", win)):
        summary = summarize_scores(streams, probs, labels)
        summary.pop("confusion", None)
        summary.pop("per_class", None)
        out[name] = summary
    return out


def save(model: EmotionModel, lora: LoraSettings | None, out: str, record: dict) -> None:
    """Save the current weights (LoRA merged into a copy when extending a base model)."""
    extra = {TRAINING_RECORD: json.dumps(record, indent=2, default=str) + "\n"}
    # new weights make new distributions: a temperature of the initial model does not carry
    model = dataclasses.replace(model, calibration=None)
    if lora is None:
        save_model(model, out, extra_files=extra)
        return
    import copy

    merged = copy.deepcopy(model.model).merge_and_unload()  # type: ignore[operator]  # a PeftModel
    save_model(dataclasses.replace(model, model=merged), out, extra_files=extra)
