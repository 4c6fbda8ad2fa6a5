from pipelines.eval.evaluate import (
    add_memory_arguments,
    label_conversations,
    load_conversations,
    memory_config,
)

__all__ = [
    "add_memory_arguments",
    "label_conversations",
    "load_conversations",
    "memory_config",
]
