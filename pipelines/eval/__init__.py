from pipelines.eval.config import add_labeling_arguments, load_labeling_config
from pipelines.eval.corpus import label_conversations, load_conversations

__all__ = [
    "add_labeling_arguments",
    "label_conversations",
    "load_conversations",
    "load_labeling_config",
]
