"""Gold-labelled training conversations of the memory loop (``memory_loop.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dpm_worker.model import IGNORE
from dpm_worker.utterance import Utterance


@dataclass
class TrainingConversation:
    """One gold-labelled conversation: its utterances (in order) and gold label indices."""

    conversation_id: str
    utterances: list[Utterance]
    labels: list[int]  # label index per utterance, IGNORE when unlabelled


def training_conversation(
    conversation_id: str, rows: Sequence[dict], labels: Sequence[str]
) -> TrainingConversation:
    """Rows of :func:`dpm_worker.training.token_cache.group_conversations` -> one training conversation."""
    index = {label: i for i, label in enumerate(labels)}
    utterances = [
        Utterance(conversation_id, int(r["utterance_index"]), str(r["speaker"]), emotion=r["emotion"], audio_ids=np.asarray(r["codes"], dtype=np.int64))
        for r in rows
    ]  # fmt: skip
    gold = [index.get(u.emotion, IGNORE) if u.emotion is not None else IGNORE for u in utterances]
    return TrainingConversation(conversation_id, utterances, gold)
