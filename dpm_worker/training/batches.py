"""Training data: conversations as token streams, random windows of them, the batch tensors.

A window starts at an utterance boundary (``model.stream.utterance_start``, the one rule labeling
also uses), so every row of a batch reads its emotions exactly as the labeler would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dpm_worker.model import IGNORE, StreamVocab, utterance_start


@dataclass
class ConversationStream:
    """One conversation as a token stream with its labelled ``<audio_end>`` positions."""

    conversation_id: str
    tokens: np.ndarray  # [L] int64
    ends: np.ndarray  # [U] position of each utterance's <audio_end>
    labels: np.ndarray  # [U] label index, IGNORE when unlabelled
    speakers: np.ndarray  # [U] speaker slot
    expressive: np.ndarray  # [U] 1 expressive, 0 not, -1 unknown
    previous: np.ndarray  # [U, aux] index of the same speaker's k-th previous utterance, -1 none


def build_stream(
    vocab: StreamVocab,
    conversation_id: str,
    utterances: Sequence[dict],
    *,
    history_labels: str = "none",
    aux_previous: int = 2,
) -> ConversationStream:
    """Concatenate ``<spk> codes... <audio_end>`` (+ ``<emo>`` with ``predicted``) per utterance.

    Args:
        utterances: dicts with ``speaker``, ``codes``, ``emotion`` (or None) and optionally
            ``expressive``, in dialogue order.
    """
    slots: dict[str, int] = {}
    tokens: list[int] = []
    ends, labels, speakers, expressive = [], [], [], []
    last_turns: dict[int, list[int]] = {}
    previous = np.full((len(utterances), aux_previous), -1, dtype=np.int64)
    for u, utt in enumerate(utterances):
        slot = slots.setdefault(utt["speaker"], len(slots))
        tokens.extend(vocab.utterance_tokens(utt["codes"], slot))
        ends.append(len(tokens) - 1)
        label = IGNORE if utt.get("emotion") is None else vocab.label_index(utt["emotion"])
        labels.append(label)
        if history_labels == "predicted":
            # Placeholder emotion token (the true label; noised per window at batch time).
            tokens.append(vocab.emotion_offset + max(label, 0))
        speakers.append(slot)
        flag = utt.get("expressive")
        expressive.append(-1 if flag is None else int(bool(flag)))
        turns = last_turns.setdefault(slot, [])
        for k in range(min(aux_previous, len(turns))):
            previous[u, k] = turns[-1 - k]
        turns.append(u)
    return ConversationStream(
        conversation_id,
        np.asarray(tokens, dtype=np.int64),
        np.asarray(ends, dtype=np.int64),
        np.asarray(labels, dtype=np.int64),
        np.asarray(speakers, dtype=np.int64),
        np.asarray(expressive, dtype=np.int64),
        previous,
    )


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, W]
    attention_mask: torch.Tensor  # [B, W]
    audio_targets: torch.Tensor  # [B, W] next token where it is audio, else IGNORE
    emotion_targets: torch.Tensor  # [B, W] label index at <audio_end> positions, else IGNORE
    aux_targets: torch.Tensor  # [K, B, W] labels of the same speaker's earlier turns


def make_batch(
    vocab: StreamVocab,
    streams: Sequence[ConversationStream],
    starts: Sequence[int],
    window: int,
    *,
    history_labels: str = "none",
    label_noise: float = 0.0,
    rng: np.random.Generator | None = None,
    lengths: Sequence[int] | None = None,
) -> Batch:
    """Cut ``streams[i][starts[i]:starts[i] + window]`` into one right-padded batch.

    ``lengths`` (optional) caps row ``i`` at ``min(window, lengths[i])`` tokens (isolated
    utterances, see :func:`isolate_rows`).
    """
    n_aux = streams[0].previous.shape[1] if streams else 0
    ids = np.zeros((len(streams), window), dtype=np.int64)
    mask = np.zeros_like(ids)
    emo = np.full_like(ids, IGNORE)
    aux = np.full((n_aux, len(streams), window), IGNORE, dtype=np.int64)
    for b, (stream, start) in enumerate(zip(streams, starts, strict=True)):
        size = window if lengths is None else min(window, int(lengths[b]))
        piece = stream.tokens[start : start + size].copy()
        if history_labels == "predicted" and label_noise > 0 and rng is not None:
            is_emo = piece >= vocab.emotion_offset
            noisy = is_emo & (rng.random(piece.shape) < label_noise)
            piece[noisy] = vocab.emotion_offset + rng.integers(
                len(vocab.labels), size=int(noisy.sum())
            )
        ids[b, : len(piece)] = piece
        mask[b, : len(piece)] = 1
        inside = (stream.ends >= start) & (stream.ends < start + len(piece))
        for u in np.flatnonzero(inside):
            pos = stream.ends[u] - start
            emo[b, pos] = stream.labels[u]
            for k in range(n_aux):
                prev = stream.previous[u, k]
                # Only earlier turns still inside the window: the model cannot know the rest.
                if prev >= 0 and stream.ends[prev] >= start:
                    aux[k, b, pos] = stream.labels[prev]
    audio = np.full_like(ids, IGNORE)
    nxt = ids[:, 1:]
    is_audio = (nxt >= vocab.audio_offset) & (nxt < vocab.speaker_offset) & (mask[:, 1:] == 1)
    audio[:, :-1] = np.where(is_audio, nxt, IGNORE)
    return Batch(*(torch.from_numpy(a) for a in (ids, mask, audio, emo, aux)))


def sample_starts(
    streams: Sequence[ConversationStream],
    window: int,
    n: int,
    rng: np.random.Generator,
    aligned_fraction: float = 0.0,
) -> tuple[list[ConversationStream], list[int]]:
    """``n`` random windows: a conversation drawn in proportion to its length, then a start.

    A start is uniform over token positions, or, with probability ``aligned_fraction``, the
    first token of a random utterance: the window's first utterance is then read with no
    history at all, exactly as ``utterance`` mode reads every utterance, and the later ones
    with a history that starts on an utterance boundary. Without aligned starts, a model
    almost never sees a context-free utterance in training.
    """
    lengths = np.array([len(s.tokens) for s in streams], dtype=np.float64)
    picks = rng.choice(len(streams), size=n, p=lengths / lengths.sum())
    starts = []
    for i in picks:
        stream = streams[i]
        if rng.random() < aligned_fraction:
            starts.append(
                utterance_start(stream.tokens, stream.ends, int(rng.integers(len(stream.ends))))
            )
        else:
            starts.append(int(rng.integers(0, max(1, len(stream.tokens) - window + 1))))
    return [streams[i] for i in picks], starts


def isolate_rows(
    streams: Sequence[ConversationStream],
    starts: Sequence[int],
    fraction: float,
    rng: np.random.Generator,
) -> tuple[list[int], list[int] | None]:
    """Turn a share ``fraction`` of the batch rows into one utterance alone.

    Such a row starts on a random utterance of its stream and stops at that utterance's
    ``<audio_end>``: the model reads it with no history and no later speech, exactly as
    ``utterance`` mode does. Why: aligned windows give only their first utterance a
    context-free read, so an utterance-mode read is a small share of the emotion loss.

    Returns:
        The new starts and per-row lengths (a huge number for untouched rows; ``None`` when
        ``fraction`` is 0, which draws nothing from ``rng`` so old runs replay unchanged).
    """
    if fraction <= 0:
        return list(starts), None
    new_starts, lengths = list(starts), [2**62] * len(starts)
    for b, stream in enumerate(streams):
        if rng.random() < fraction:
            u = int(rng.integers(len(stream.ends)))
            first = utterance_start(stream.tokens, stream.ends, u)
            new_starts[b] = first
            lengths[b] = int(stream.ends[u]) - first + 1
    return new_starts, lengths
