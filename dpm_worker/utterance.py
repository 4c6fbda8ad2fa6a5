"""The two records one utterance travels in, from its manifest row to its table row.

An :class:`Utterance` is made by the audio stage (``dpm_worker.audio.conversation_segments``)
from the manifest rows and keeps its identity (conversation, index, speaker, times, gold
emotion) the whole way: the speech stage (``dpm_worker.speech.tokenize_utterances``) fills in
its speech codes, the labeler (``dpm_worker.memory``) wraps it in a :class:`LabeledUtterance`,
and the tables (``dpm_worker.tables``) write that as one row. Nothing is looked up again or
zipped back on the way. This module depends on numpy and the errors only, so every stage
can import it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dpm_worker.errors import LabelError


@dataclass(frozen=True)
class Utterance:
    """One utterance of a conversation: its identity, its audio, and once tokenized its codes.

    Args:
        conversation_id: the conversation it belongs to.
        utterance_index: its index in the conversation (dialogue order). A VAD turn gets its
            own index (0..n-1 by start time), never its recording row's.
        speaker: the speaker's name.
        start_s: where it starts in its recording, in seconds (None: not known).
        end_s: where it ends, in seconds (None: not known).
        emotion: the gold emotion, if the manifest has one (None for VAD turns: a file-level
            label is not a turn's label).
        expressive: the synthetic corpus's flag (manifest ``extra``), None when absent.
        audio_uri: the recording it was cut from.
        channel: the recording's channel it was read from (None: mono or mixed down).
        samples: float32 mono samples at 16 kHz (None once tokenized: the codes replace them).
        audio_ids: int64 speech-tokenizer codes (None until tokenized).
        pieces: how many utterances the VAD region or diarized turn it comes from was cut
            into to fit the model (1: it was read whole).
        acoustic: float64 acoustic summary (``dpm_worker.speech.summary``), set by tokenizing
            for a model with an acoustic head (None otherwise).
    """

    conversation_id: str
    utterance_index: int
    speaker: str
    start_s: float | None = None
    end_s: float | None = None
    emotion: str | None = None
    expressive: bool | None = None
    audio_uri: str = ""
    channel: int | None = None
    samples: np.ndarray | None = None
    audio_ids: np.ndarray | None = None
    pieces: int = 1
    acoustic: np.ndarray | None = None

    def codes(self) -> np.ndarray:
        """The speech codes.

        Raises:
            LabelError: the utterance is not tokenized yet.
        """
        if self.audio_ids is None:
            raise LabelError(
                f"utterance {self.utterance_index} of {self.conversation_id!r} is not tokenized"
            )
        return self.audio_ids


@dataclass(frozen=True)
class LabeledUtterance:
    """The emotion read for one utterance: one row of the emotion table.

    Args:
        utterance: the utterance, identity included.
        emotion: the most probable emotion.
        confidence: its probability.
        probs: float32 probabilities in the order of the model's labels.
        ms: wall time spent labeling it (write + read).
        context_tokens: tokens in the model input (history part + utterance; the last
            chunk's when it was read in chunks).
        chunks: model reads the utterance took: more than 1 when it was longer than the
            model's context and read in chunks (``LabelingConfig.long_utterances``).
        truncated: only its last audio tokens that fit the context were read.
    """

    utterance: Utterance
    emotion: str
    confidence: float
    probs: np.ndarray
    ms: float = 0.0
    context_tokens: int = 0
    chunks: int = 1
    truncated: bool = False


def inputs_digest(utterances: Sequence[Utterance]) -> str:
    """A hash of a conversation's input as the labeler sees it (indices, speakers, codes, and
    acoustic summaries where there are any)."""
    digest = hashlib.sha256()
    for utt in utterances:
        digest.update(f"{utt.utterance_index}\x00{utt.speaker}\x00".encode())
        digest.update(utt.codes().astype("<i8").tobytes())
        if utt.acoustic is not None:
            digest.update(np.asarray(utt.acoustic, dtype="<f8").tobytes())
    return digest.hexdigest()[:32]
