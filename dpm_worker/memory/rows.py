"""What the modes read, how a long utterance is read, and the row an utterance becomes.

Modes differ only in what goes into the model's input for utterance i, and whether a write to
the temporary LoRA memory precedes the read (:mod:`dpm_worker.memory.step` does the step):

=========  ===============================================  =======================
mode       input for utterance i                            memory
=========  ===============================================  =======================
utterance  ``tokens_i``                                     none
window     ``history[-n_r:] + tokens_i``                    none
full       ``history + tokens_i`` up to ``max_context``     none
dpm        ``history[-n_r:] + tokens_i``                    write, then read
prior-ema  ``history[-n_r:] + tokens_i``                    a running average
=========  ===============================================  =======================

``tokens_i`` is ``<spk> audio... <audio_end>``; the emotion is always read at ``<audio_end>``.
``prior-ema`` is the closed form of the ``prior`` memory with no adapter (issue 11): the window
read times the running average of the same speaker's earlier window reads, ``p ∝ r_i × m^beta``
and then ``m ← (1 - a) m + a r_i`` (``ema_rate`` a, ``ema_weight`` beta), so every table shows
what the parameter memory adds beyond it.

The input is built by ``dpm_worker.model.fit_context`` (shared with training): an input longer
than the model's ``max_context`` loses its oldest history tokens first. An utterance that alone
is longer than the context is read by ``LabelingConfig.long_utterances``:

- ``chunks`` (default): its audio is cut into the fewest equal chunks that fit; each chunk is
  read in turn as a turn of the same speaker (history and memory carry across them) and the
  utterance's distribution is the chunks' mean weighted by their length. Its row says how many
  chunks it took.
- ``truncate``: ``fit_context``'s rule, only its last audio tokens that fit are read; its row
  says it was truncated.

Chosen by measurement on a synthetic corpus with long turns (docs/dpm.md, "Long turns").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dpm_worker.memory.config import LabelingConfig
from dpm_worker.utterance import LabeledUtterance, Utterance


def labeled_row(
    utt: Utterance,
    probs: np.ndarray,
    labels: Sequence[str],
    ms: float,
    context_tokens: int,
    parts: Sequence[np.ndarray],
    max_context: int,
    best: int | None = None,
) -> LabeledUtterance:
    """An utterance's output row: the most probable label and how the utterance was read.

    ``best``: the label's index when it is known already (the argmax of the distribution
    before calibration, which a temperature keeps even where float32 rounding would tie);
    None takes the argmax of ``probs``.
    """
    best = int(np.argmax(probs)) if best is None else best
    probs = np.asarray(probs, dtype=np.float32)
    truncated = len(parts[-1]) + 2 > max_context
    return LabeledUtterance(
        utt, labels[best], float(probs[best]), probs, ms, context_tokens, len(parts), truncated
    )


def utterance_parts(
    audio_ids: np.ndarray, max_context: int, long_utterances: str
) -> list[np.ndarray]:
    """The parts an utterance is read in: itself, or under ``chunks`` the fewest equal chunks
    whose tokens (with ``<spk>`` and ``<audio_end>``) fit the context."""
    room = max_context - 2
    if long_utterances != "chunks" or len(audio_ids) <= room:
        return [audio_ids]
    return np.array_split(audio_ids, -(-len(audio_ids) // room))


def ema_read(
    averages: dict[int, torch.Tensor], speaker_slot: int, read: torch.Tensor, config: LabelingConfig
) -> torch.Tensor:
    """``prior-ema``: ``read`` times the speaker's running average of its earlier reads, which
    then takes ``read`` in (``averages`` is updated in place)."""
    average = averages.get(speaker_slot)
    a = config.ema_rate
    if average is None:
        averages[speaker_slot] = read.clone()
        return read
    averages[speaker_slot] = (1.0 - a) * average + a * read
    logits = torch.log(read.clamp_min(1e-12)) + config.ema_weight * torch.log(
        average.clamp_min(1e-12)
    )
    return torch.softmax(logits, dim=-1)
