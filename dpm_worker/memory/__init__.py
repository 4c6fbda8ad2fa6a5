from dpm_worker.memory.config import OPTIMIZERS, PRIOR_INPUTS, WRITE_TARGETS, MemoryConfig
from dpm_worker.memory.labeling import (
    MODES,
    ConversationLabeler,
    LabelingConfig,
    PreparedUtterance,
)
from dpm_worker.memory.lora import TemporaryLoraMemory

__all__ = [
    "ConversationLabeler",
    "LabelingConfig",
    "MODES",
    "MemoryConfig",
    "OPTIMIZERS",
    "PRIOR_INPUTS",
    "PreparedUtterance",
    "TemporaryLoraMemory",
    "WRITE_TARGETS",
]
