from dpm_worker.memory.batched import (
    MEMORY_DTYPE,
    BatchedLoraLinear,
    BatchedLoraMemory,
    lora_delta,
)
from dpm_worker.memory.cache import HistoryCache
from dpm_worker.memory.config import (
    HISTORY_CACHES,
    LONG_UTTERANCES,
    MODES,
    OPTIMIZERS,
    PRIOR_INPUTS,
    WRITE_TARGETS,
    LabelingConfig,
    MemoryConfig,
)
from dpm_worker.memory.resume import ConversationState, capture_state, restore_state
from dpm_worker.memory.slots import SlotLabeler, label_batched
from dpm_worker.memory.step import (
    AudioWrite,
    Padded,
    PriorWrite,
    ReadOnly,
    Step,
    StepRow,
    dpm_step,
    strategy_for,
)

__all__ = [
    "HISTORY_CACHES",
    "HistoryCache",
    "AudioWrite",
    "BatchedLoraLinear",
    "BatchedLoraMemory",
    "Padded",
    "PriorWrite",
    "ReadOnly",
    "Step",
    "StepRow",
    "dpm_step",
    "label_batched",
    "lora_delta",
    "strategy_for",
    "LONG_UTTERANCES",
    "ConversationState",
    "LabelingConfig",
    "MEMORY_DTYPE",
    "MODES",
    "MemoryConfig",
    "OPTIMIZERS",
    "PRIOR_INPUTS",
    "WRITE_TARGETS",
    "capture_state",
    "restore_state",
    "SlotLabeler",
]
