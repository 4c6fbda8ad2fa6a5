from dpm_worker.memory.config import OPTIMIZERS, PRIOR_INPUTS, WRITE_TARGETS, MemoryConfig
from dpm_worker.memory.labeling import (
    MODES,
    ConversationLabeler,
    LabelingConfig,
    PreparedUtterance,
    UtteranceInput,
    fit_context,
    tail,
)
from dpm_worker.memory.lora import MEMORY_DTYPE, TemporaryLoraMemory

__all__ = [
    "ConversationLabeler",
    "LabelingConfig",
    "MEMORY_DTYPE",
    "MODES",
    "MemoryConfig",
    "OPTIMIZERS",
    "PRIOR_INPUTS",
    "PreparedUtterance",
    "TemporaryLoraMemory",
    "UtteranceInput",
    "WRITE_TARGETS",
    "fit_context",
    "tail",
]
