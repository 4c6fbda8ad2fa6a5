"""Acted corpora as conversations: one speaker's takes in a seeded dialogue order.

Acted emotional corpora (RAVDESS, EMOVO, TurEV-DB; CORPORA.md) have no dialogue order. Their
readers write one conversation per speaker whose order is drawn from a seed, in one of two ways:

- ``shuffled``: a seeded permutation of the speaker's files. Only the voice is shared between
  neighbours; what context or memory can learn is the speaker's habit.
- ``inertia``: a seeded Markov chain over the speaker's emotions that stays with probability
  ``stay`` (0.7), as moods persist in real dialogue; each drawn emotion takes the next of the
  speaker's files of that emotion (shuffled, without repeats) until all are used.

Each file is one utterance (its row has no times: a conversation of many whole files is never
VAD-segmented, ``dpm_worker/audio/segments.py`` rule 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from dpm_worker.corpus.layouts import DropSummary
from dpm_worker.errors import ConfigError
from dpm_worker.storage import join_uri

ORDERS: tuple[str, ...] = ("shuffled", "inertia")
K = TypeVar("K")


def conversation_order(
    labels: Sequence[str], order: str, rng: np.random.Generator, *, stay: float = 0.7
) -> list[int]:
    """A permutation of ``range(len(labels))``: the dialogue order of one speaker's files.

    Args:
        labels: each file's emotion label.
        order: ``shuffled`` or ``inertia`` (module docstring).
        rng: the conversation's generator.
        stay: ``inertia``'s probability of staying with the current emotion while it has files.

    Raises:
        ConfigError: an unknown order or ``stay`` outside [0, 1].
    """
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {ORDERS}, got {order!r}")
    if not 0.0 <= stay <= 1.0:
        raise ConfigError(f"stay must be in [0, 1], got {stay!r}")
    if order == "shuffled":
        return [int(i) for i in rng.permutation(len(labels))]
    pools: dict[str, list[int]] = {}
    for i in rng.permutation(len(labels)):
        pools.setdefault(labels[int(i)], []).append(int(i))
    emotions = sorted(pools)
    current = emotions[int(rng.integers(len(emotions)))] if emotions else ""
    picked: list[int] = []
    while len(picked) < len(labels):
        # one uniform draw per step whatever happens, so the chain's draws stay aligned
        u = float(rng.random())
        others = [e for e in emotions if e != current and pools[e]]
        if not pools[current] or (u >= stay and others):
            current = others[int(rng.integers(len(others)))]
        picked.append(pools[current].pop())
    return picked


def order_conversation(
    records: Sequence[dict[str, Any]], order: str, rng: np.random.Generator, *, stay: float = 0.7
) -> list[dict[str, Any]]:
    """One speaker's manifest records (each with its ``emotion``) in a drawn dialogue order.

    The one place where the acted-corpus readers turn a speaker's takes into a conversation:
    the records come back in :func:`conversation_order`'s order with ``utterance_index``
    0..n-1 set (new dicts; the inputs are not changed).

    Args:
        records: the speaker's kept takes, in a stable (sorted) order.
        order: ``shuffled`` or ``inertia``.
        rng: the conversation's generator (seeded per speaker by the reader).
        stay: ``inertia``'s probability of keeping the emotion.
    """
    sequence = conversation_order([r["emotion"] for r in records], order, rng, stay=stay)
    return [{**records[position], "utterance_index": i} for i, position in enumerate(sequence)]


def add_conversation(
    records: list[dict[str, Any]],
    takes: Sequence[dict[str, Any]],
    order: str,
    rng: np.random.Generator,
    summary: DropSummary,
    *,
    stay: float = 0.7,
) -> None:
    """Append one speaker's takes to ``records`` as a conversation in a drawn order
    (:func:`order_conversation`), counted as kept in ``summary``."""
    for record in order_conversation(takes, order, rng, stay=stay):
        summary.count_kept(record["emotion"])
        records.append(record)
    summary.conversations += 1


def locate_layout(
    fs: Any, base: str, root: str, nested: str, find: Callable[[Any, str], dict[K, str]]
) -> tuple[dict[K, str], str, str]:
    """A corpus layout's folders (``find``) at ``base``, or in its child ``nested`` when the
    parent folder was given; returns them with the base path and root URI they are under."""
    found = find(fs, base)
    if not found:
        inner = join_uri(base, nested)
        found = find(fs, inner)
        if found:
            return found, inner, join_uri(root, nested)
    return found, base, root


def parse_speakers(text: str | None, known: Sequence[str]) -> list[str] | None:
    """``"f1,m2"`` -> speaker ids checked against the corpus's ``known`` ones; None -> None.

    Raises:
        ConfigError: an empty list or a speaker the corpus does not have (named).
    """
    if text is None:
        return None
    speakers = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not speakers:
        raise ConfigError(f"speakers must be a comma-separated list, got {text!r}")
    unknown = [s for s in speakers if s not in known]
    if unknown:
        raise ConfigError(f"unknown speaker(s) {unknown} in {text!r}; the corpus has {list(known)}")
    return sorted(set(speakers), key=list(known).index)
