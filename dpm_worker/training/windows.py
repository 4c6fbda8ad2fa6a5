"""Where training windows start: random or utterance-aligned starts, isolated utterances.

A window is a slice of one conversation stream; these choose which slices a batch holds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from dpm_worker.errors import ConfigError
from dpm_worker.model import utterance_start

if TYPE_CHECKING:  # the stream type only
    from dpm_worker.training.batches import ConversationStream


def sample_starts(
    streams: Sequence[ConversationStream],
    window: int,
    n: int,
    rng: np.random.Generator,
    aligned_fraction: float = 0.0,
    shares: np.ndarray | None = None,
) -> tuple[list[ConversationStream], list[int]]:
    """``n`` random windows: a conversation drawn in proportion to its length (or with the
    probabilities ``shares``, :func:`corpus_shares`), then a start.

    A start is uniform over token positions, or, with probability ``aligned_fraction``, the
    first token of a random utterance: the window's first utterance is then read with no
    history at all, exactly as ``utterance`` mode reads every utterance, and the later ones
    with a history that starts on an utterance boundary. Without aligned starts, a model
    almost never sees a context-free utterance in training.
    """
    if shares is None:
        lengths = np.array([len(s.tokens) for s in streams], dtype=np.float64)
        shares = lengths / lengths.sum()
    picks = rng.choice(len(streams), size=n, p=shares)
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


def corpus_shares(
    streams: Sequence[ConversationStream], pattern: str, weights: Sequence[str]
) -> np.ndarray | None:
    """Each stream's probability of being drawn when corpora are weighed (``TrainConfig``'s
    ``corpus_pattern`` / ``corpus_weights``): a corpus's streams share its weight's part, each
    in proportion to its length. None without a pattern (draws in proportion to length).

    Raises:
        ConfigError: every corpus weighs 0.
    """
    if not pattern:
        return None
    regex = re.compile(pattern)
    named = {k: float(v) for k, _, v in (w.rpartition("=") for w in weights)}
    corpus = []
    for stream in streams:
        match = regex.search(stream.conversation_id)
        corpus.append(
            "" if match is None else (match.group(1) if regex.groups else match.group(0)) or ""
        )
    lengths = np.array([len(s.tokens) for s in streams], dtype=np.float64)
    shares = np.zeros(len(streams))
    for name in set(corpus):
        rows = np.array([c == name for c in corpus])
        shares[rows] = named.get(name, 1.0) * lengths[rows] / lengths[rows].sum()
    if shares.sum() <= 0:
        raise ConfigError(f"train.corpus_weights {list(weights)} give every corpus weight 0")
    return shares / shares.sum()


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
