"""The token layout of the emotion speech-LLM (DESIGN section 3).

One vocabulary: ``[text tokens] + <audio_0..K-1> + <spk_0..S-1> + <audio_end> + <emo_*>``.
A conversation is one stream ``<spk_a> a a a ... <audio_end> <spk_b> a a ... <audio_end> ...``;
the emotion is read from the logits at each ``<audio_end>`` position, restricted to the
emotion tokens. Text tokens come first so that a base LLM's vocabulary can be extended in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dpm_worker.corpus import DEFAULT_LABELS
from dpm_worker.errors import ConfigError, LabelError


@dataclass(frozen=True)
class StreamVocab:
    """Token ids of the stream format.

    Args:
        text_size: number of text tokens before the added ones (a base LLM's vocabulary size,
            or the few special tokens of a from-scratch model).
        n_audio: size of the speech tokenizer's codebook.
        labels: the emotion label set, in the order of the emotion tokens.
        n_speakers: number of speaker slots; a conversation's speakers are numbered in order
            of first appearance and wrap around beyond this.
    """

    text_size: int
    n_audio: int
    labels: tuple[str, ...] = DEFAULT_LABELS
    n_speakers: int = 8
    _label_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.text_size < 0:
            raise ConfigError(f"text_size must be >= 0, got {self.text_size}")
        if self.n_audio < 2:
            raise ConfigError(f"n_audio must be >= 2, got {self.n_audio}")
        if self.n_speakers < 1:
            raise ConfigError(f"n_speakers must be >= 1, got {self.n_speakers}")
        labels = tuple(self.labels)
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ConfigError(f"labels must be >= 2 distinct names, got {labels!r}")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "_label_index", {name: i for i, name in enumerate(labels)})

    @property
    def audio_offset(self) -> int:
        return self.text_size

    @property
    def speaker_offset(self) -> int:
        return self.audio_offset + self.n_audio

    @property
    def audio_end(self) -> int:
        return self.speaker_offset + self.n_speakers

    @property
    def emotion_offset(self) -> int:
        return self.audio_end + 1

    @property
    def emotion_ids(self) -> list[int]:
        return list(range(self.emotion_offset, self.emotion_offset + len(self.labels)))

    @property
    def size(self) -> int:
        return self.emotion_offset + len(self.labels)

    def added_token_strings(self) -> list[str]:
        """The strings of every token added after the text tokens, in id order."""
        return (
            [f"<audio_{i}>" for i in range(self.n_audio)]
            + [f"<spk_{i}>" for i in range(self.n_speakers)]
            + ["<audio_end>"]
            + [f"<emo_{name}>" for name in self.labels]
        )

    def speaker_token(self, slot: int) -> int:
        return self.speaker_offset + (slot % self.n_speakers)

    def emotion_token(self, label: str) -> int:
        return self.emotion_offset + self.label_index(label)

    def label_index(self, label: str) -> int:
        try:
            return self._label_index[label]
        except KeyError:
            raise LabelError(
                f"unknown emotion label {label!r}; the label set is {self.labels}"
            ) from None

    def utterance_tokens(
        self, audio_ids: Sequence[int] | np.ndarray, speaker_slot: int
    ) -> list[int]:
        """``<spk> audio... <audio_end>`` for one utterance.

        Args:
            audio_ids: speech-tokenizer codes in ``[0, n_audio)``.
            speaker_slot: the speaker's number within its conversation.
        """
        codes = np.asarray(audio_ids, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= self.n_audio):
            raise ConfigError(
                f"audio codes must lie in [0, {self.n_audio}), got [{codes.min()}, {codes.max()}]"
            )
        return [
            self.speaker_token(speaker_slot),
            *(codes + self.audio_offset).tolist(),
            self.audio_end,
        ]

    def to_dict(self) -> dict:
        return {
            "text_size": self.text_size,
            "n_audio": self.n_audio,
            "labels": list(self.labels),
            "n_speakers": self.n_speakers,
        }

    @classmethod
    def from_dict(cls, data: dict) -> StreamVocab:
        return cls(
            text_size=int(data["text_size"]),
            n_audio=int(data["n_audio"]),
            labels=tuple(data["labels"]),
            n_speakers=int(data.get("n_speakers", 8)),
        )
