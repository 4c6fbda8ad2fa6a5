"""The labeling actor's parts (DESIGN section 8): the worker that Ray wraps at the call site,
the slot loop that steps every conversation in flight as one batch, the read-ahead that hides
storage behind compute, the rules that turn bad input into error rows, and the SIGTERM guard.
Ray never appears here: ``pipelines/label`` wraps :class:`ConversationWorker`."""

from dpm_worker.worker.conversation_worker import ConversationWorker, WorkerSettings, segment_limit
from dpm_worker.worker.error_rows import input_error_rows, read_conversation, read_segments

__all__ = [
    "ConversationWorker",
    "WorkerSettings",
    "input_error_rows",
    "read_conversation",
    "read_segments",
    "segment_limit",
]
