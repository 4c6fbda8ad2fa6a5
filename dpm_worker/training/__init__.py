from dpm_worker.training.augment import AugmentConfig, augment_corpus
from dpm_worker.training.batches import (
    ConversationStream,
    build_stream,
    make_batch,
)
from dpm_worker.training.conversations import TrainingConversation, training_conversation
from dpm_worker.training.loop import AuxHeads, TrainConfig, compute_loss, train
from dpm_worker.training.memory_loop import MemoryLoopConfig, MemoryLoopTrainer
from dpm_worker.training.precision import (
    autocast,
    autocast_dtype,
    place_for_training,
    resolve_device,
)
from dpm_worker.training.schedule import lr_at
from dpm_worker.training.token_cache import (
    conversation_ids,
    group_conversations,
    iter_waveforms,
    split_conversations,
    tokenize_corpus,
)
from dpm_worker.training.validation import score_stream, score_stream_windows, summarize_scores
from dpm_worker.training.windows import isolate_rows, sample_starts

__all__ = [
    "AugmentConfig",
    "augment_corpus",
    "AuxHeads",
    "ConversationStream",
    "MemoryLoopConfig",
    "MemoryLoopTrainer",
    "TrainConfig",
    "TrainingConversation",
    "autocast",
    "autocast_dtype",
    "build_stream",
    "compute_loss",
    "conversation_ids",
    "group_conversations",
    "isolate_rows",
    "iter_waveforms",
    "lr_at",
    "place_for_training",
    "resolve_device",
    "make_batch",
    "sample_starts",
    "score_stream",
    "score_stream_windows",
    "split_conversations",
    "summarize_scores",
    "tokenize_corpus",
    "train",
    "training_conversation",
]
