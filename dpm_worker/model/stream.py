"""Where an utterance sits in the stream format and how an over-long input is cut (one rule).

Labeling (``dpm_worker.memory``), training batches and training validation
(``dpm_worker.training``) all build the model's input for utterance ``i`` as
``history[-n:] + tokens_i`` through :func:`fit_context`, with ``n`` from
:func:`history_budget`, and find an utterance's first token in a stream with
:func:`utterance_start`, so training reads utterances exactly as the product does.

Truncation rule: an input longer than the model's ``max_context`` loses tokens from the left:
first the oldest history tokens, then, if the utterance alone is too long, its first audio
tokens; its speaker token is kept at the front and ``<audio_end>`` at the end, so the emotion is
read exactly as for any other utterance. An utterance longer than ``n`` needs no truncation:
``n`` bounds the history part only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Label value where a loss is off (torch's cross_entropy ignore_index): training targets and
# the memory's write labels.
IGNORE = -100


def tail(tokens: Sequence[int], n: int) -> list[int]:
    """The last ``n`` tokens (none for ``n <= 0``; note ``seq[-0:]`` would be all of them)."""
    return list(tokens[max(0, len(tokens) - n) :]) if n > 0 else []


def history_budget(mode: str, window_tokens: int, max_context: int) -> int:
    """History tokens a mode puts before an utterance: none, the window (n_r), or the context.

    ``utterance`` reads none, ``full`` up to ``max_context``, ``window`` and ``dpm``
    ``window_tokens``.
    """
    if mode == "utterance":
        return 0
    if mode == "full":
        return max_context
    return window_tokens


def fit_context(
    history_part: Sequence[int], tokens: Sequence[int], max_context: int
) -> tuple[list[int], int]:
    """Apply the truncation rule (module docstring) to ``history_part + tokens``.

    Args:
        history_part: the history tokens the mode reads (already cut to its budget).
        tokens: the utterance's ``<spk> audio... <audio_end>`` (``<emo>`` never follows it
            here: the emotion is read at ``<audio_end>``).
        max_context: the model's context in tokens (>= 2).

    Returns:
        The input ids and the position where the utterance's tokens start in them.
    """
    room = max_context - len(tokens)
    if room >= 0:
        kept = tail(history_part, room)
        return kept + list(tokens), len(kept)
    # The utterance alone is too long: keep <spk>, then its last tokens up to <audio_end>.
    return [int(tokens[0]), *tail(tokens[1:], max_context - 1)], 0


def utterance_start(tokens: np.ndarray, ends: np.ndarray, u: int) -> int:
    """Position of utterance ``u``'s first token (its speaker token) in a stream.

    It follows the previous ``<audio_end>``, and the emotion token after it when the history
    carries labels (an emotion token's id is above ``<audio_end>``'s).

    Args:
        tokens: the conversation's token stream.
        ends: the position of each utterance's ``<audio_end>``.
        u: the utterance's number in the stream.
    """
    if u == 0:
        return 0
    end = int(ends[u - 1])
    nxt = end + 1
    labelled = nxt < len(tokens) and tokens[nxt] >= tokens[end] + 1
    return nxt + int(labelled)
