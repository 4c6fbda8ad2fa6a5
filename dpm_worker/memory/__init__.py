from dpm_worker.memory.config import OPTIMIZERS, PRIOR_INPUTS, WRITE_TARGETS, MemoryConfig
from dpm_worker.memory.labeling import (
    LONG_UTTERANCES,
    MODES,
    ConversationLabeler,
    LabelingConfig,
    PreparedUtterance,
)
from dpm_worker.memory.lora import TemporaryLoraMemory
from dpm_worker.memory.resume import ConversationState, capture_state, restore_state

__all__ = [
    "ConversationLabeler",
    "ConversationState",
    "LONG_UTTERANCES",
    "LabelingConfig",
    "MODES",
    "MemoryConfig",
    "OPTIMIZERS",
    "PRIOR_INPUTS",
    "PreparedUtterance",
    "TemporaryLoraMemory",
    "WRITE_TARGETS",
    "capture_state",
    "restore_state",
]
