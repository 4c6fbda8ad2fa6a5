from dpm_worker.training.batches import (
    ConversationStream,
    build_stream,
    isolate_rows,
    make_batch,
    sample_starts,
)
from dpm_worker.training.loop import TrainConfig, compute_loss, lr_at, train
from dpm_worker.training.memory_loop import (
    MemoryLoopConfig,
    MemoryLoopTrainer,
    TrainingConversation,
    training_conversation,
)
from dpm_worker.training.token_cache import (
    conversation_ids,
    group_conversations,
    iter_waveforms,
    split_conversations,
    tokenize_corpus,
)
from dpm_worker.training.validation import score_stream, score_stream_windows, summarize_scores

__all__ = [
    "ConversationStream",
    "MemoryLoopConfig",
    "MemoryLoopTrainer",
    "TrainConfig",
    "TrainingConversation",
    "build_stream",
    "compute_loss",
    "conversation_ids",
    "group_conversations",
    "isolate_rows",
    "iter_waveforms",
    "lr_at",
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
