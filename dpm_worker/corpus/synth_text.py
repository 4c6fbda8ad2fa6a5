"""Neutral-content English sentences for the synthetic corpus.

The words carry no emotion on purpose: in the synthetic corpus only prosody (and the context of
earlier turns) tells the emotion. Sentences are composed from small phrase lists so that they
vary in length (3 to 12 words), which is how utterance durations are steered.
"""

from __future__ import annotations

import numpy as np

SUBJECTS: tuple[str, ...] = (
    "the report", "my neighbor", "the train", "our manager", "the package", "the new printer",
    "his sister", "the bakery", "the library", "this old bicycle", "the weather station",
    "a delivery truck", "the committee", "her laptop", "the morning bus", "the tour guide",
    "our landlord", "the kitchen clock", "the museum", "the second invoice", "my cousin",
    "the parking meter", "the school board", "the blue folder", "the elevator", "your brother",
)  # fmt: skip
PREDICATES: tuple[str, ...] = (
    "arrived", "was moved", "opened", "closed early", "needs a new battery", "will be ready",
    "was painted gray", "has a small window", "sent the invoice", "checked the schedule",
    "stopped", "was delivered", "changed the password", "counted the boxes", "printed the map",
    "is on the list", "took the usual route", "kept the receipt", "was measured again",
    "updated the address", "left a short note", "turned off the lights", "ordered more paper",
    "followed the instructions", "was scheduled for review", "filled in the form",
)  # fmt: skip
PLACES: tuple[str, ...] = (
    "on the third floor", "near the station", "behind the school", "in the parking lot",
    "at the corner shop", "by the river", "next to the bank", "in the back room",
    "across the street", "at the front desk", "in the main hall", "on the second shelf",
    "outside the post office", "in the old building",
)  # fmt: skip
TIMES: tuple[str, ...] = (
    "on Tuesday", "this morning", "after lunch", "last week", "at nine", "before the meeting",
    "every Friday", "in the afternoon", "around noon", "yesterday", "next month", "on Sunday",
    "at half past four", "later today",
)  # fmt: skip


def compose_sentence(rng: np.random.Generator, target_words: float, candidates: int = 6) -> str:
    """A sentence whose word count is close to ``target_words``.

    Args:
        rng: the caller's generator (the result is a deterministic function of its state).
        target_words: desired length in words.
        candidates: how many random sentences to draw before taking the closest in length.
    """
    best, best_err = "", float("inf")
    for _ in range(candidates):
        parts = [
            SUBJECTS[int(rng.integers(len(SUBJECTS)))],
            PREDICATES[int(rng.integers(len(PREDICATES)))],
        ]
        shape = int(rng.integers(4))
        if shape in (1, 3):
            parts.append(PLACES[int(rng.integers(len(PLACES)))])
        if shape in (2, 3):
            parts.append(TIMES[int(rng.integers(len(TIMES)))])
        sentence = " ".join(parts)
        err = abs(len(sentence.split()) - target_words)
        if err < best_err:
            best, best_err = sentence, err
    return best[0].upper() + best[1:] + "."
