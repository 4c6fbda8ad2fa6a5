"""The canonical input manifest's columns (DESIGN section 7): the contract between stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

REQUIRED_COLUMNS: tuple[str, ...] = ("conversation_id", "utterance_index", "speaker", "audio_uri")

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("conversation_id", pa.string(), nullable=False),
        pa.field("utterance_index", pa.int32(), nullable=False),
        pa.field("speaker", pa.string(), nullable=False),
        pa.field("audio_uri", pa.string(), nullable=False),
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("channel", pa.int16()),
        pa.field("text", pa.string()),
        pa.field("emotion", pa.string()),
        # A diarization (RTTM) of the row's recording: its turns become the utterances.
        pa.field("rttm_uri", pa.string()),
    ]
)

OPTIONAL_COLUMNS: tuple[str, ...] = tuple(
    name for name in MANIFEST_SCHEMA.names if name not in REQUIRED_COLUMNS
)


@dataclass(frozen=True)
class UtteranceRow:
    """One validated manifest row; ``audio_uri`` is already absolute (resolved against the
    manifest's folder). ``start_s``/``end_s`` are None for a recording without segmentation;
    such a row may name its recording's diarization in ``rttm_uri`` (absolute too)."""

    conversation_id: str
    utterance_index: int
    speaker: str
    audio_uri: str
    start_s: float | None = None
    end_s: float | None = None
    channel: int | None = None
    text: str | None = None
    emotion: str | None = None
    rttm_uri: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# The speaker of turns found by VAD in a mono recording whose row names nobody: one unknown
# voice (or several), never a guessed name. The memory of such a conversation is one memory.
UNKNOWN_SPEAKER = "unknown"

# The default model's emotion classes: IEMOCAP's 4-class protocol (CORPORA.md).
DEFAULT_LABELS: tuple[str, ...] = ("neutral", "happy", "sad", "angry")


@dataclass(frozen=True)
class SpeakerTurn:
    """One diarized turn: ``speaker`` talks from ``start_s`` to ``end_s`` (seconds)."""

    file_id: str
    speaker: str
    start_s: float
    end_s: float
