"""Scoring token streams with a backbone: validation during training and quick measurements.

The product's evaluation is ``dpm eval`` (the labeling engine, :mod:`dpm_worker.memory.slots`).
This module scores already tokenized conversations without it, for two uses:

- :func:`score_stream`: exact ``utterance`` / ``window`` / ``full`` inputs per utterance
  (``history[-n:] + tokens_i``), batched across utterances when the history carries no labels.
- :func:`score_stream_windows`: validation during training at a fraction of the cost; the
  stream is cut into windows overlapping by half and each utterance is read in the window where
  it has at least half a window of history, so every read sees ``W/2..W`` tokens of context.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dpm_worker.errors import ConfigError
from dpm_worker.metrics import summarize
from dpm_worker.model import (
    IGNORE,
    EmotionModel,
    fit_context,
    history_budget,
    tail,
    utterance_start,
)
from dpm_worker.training.batches import ConversationStream


@torch.no_grad()
def score_stream(
    model: EmotionModel,
    stream: ConversationStream,
    mode: str,
    window_tokens: int,
    batch_size: int = 16,
) -> np.ndarray:
    """``[U, n_labels]`` probabilities per utterance in ``utterance``, ``window`` or ``full`` mode.

    With ``model.history_labels == "predicted"`` the history carries the model's own earlier
    predictions (utterances are then scored one by one, in order). Each input is built as the
    labeling loop builds it (``dpm_worker.model.fit_context``), over-long utterances included.
    """
    if mode not in ("utterance", "window", "full"):
        raise ConfigError(f"mode must be utterance, window or full, got {mode!r}")
    max_context = int(model.max_context)
    keep = history_budget(mode, window_tokens, max_context)
    tokens = stream.tokens.copy()
    predicted = model.history_labels == "predicted" and mode != "utterance"
    inputs: list[np.ndarray] = []
    probs = np.zeros((len(stream.ends), len(model.vocab.labels)), dtype=np.float32)
    for u, end in enumerate(stream.ends):
        start = utterance_start(tokens, stream.ends, u)
        history = tail(tokens[max(0, start - keep) : start].tolist(), keep)
        ids, _ = fit_context(history, tokens[start : end + 1].tolist(), max_context)
        piece = np.asarray(ids, dtype=np.int64)
        if predicted:
            probs[u] = _probs(model, [piece])[0]
            tokens[end + 1] = model.vocab.emotion_offset + int(probs[u].argmax())
        else:
            inputs.append(piece)
    for i in range(0, len(inputs), batch_size):
        probs[i : i + batch_size] = _probs(model, inputs[i : i + batch_size])
    return probs


def _probs(model: EmotionModel, pieces: Sequence[np.ndarray]) -> np.ndarray:
    """Left-pad and read the emotion distribution at each piece's last token."""
    width = max(len(p) for p in pieces)
    ids = torch.zeros(len(pieces), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, piece in enumerate(pieces):
        ids[b, width - len(piece) :] = torch.from_numpy(piece)
        mask[b, width - len(piece) :] = 1
    return model.emotion_probs(ids, mask).cpu().numpy()


@torch.no_grad()
def score_stream_windows(
    model: EmotionModel, stream: ConversationStream, window: int
) -> np.ndarray:
    """Cheap validation read-out: half-overlapping windows (module docstring)."""
    probs = np.zeros((len(stream.ends), len(model.vocab.labels)), dtype=np.float32)
    done = np.zeros(len(stream.ends), dtype=bool)
    half = window // 2
    start = 0
    while True:
        piece = torch.from_numpy(stream.tokens[start : start + window])[None]
        logits = model.model(input_ids=piece.to(model.device)).logits[0].float()
        emo = torch.softmax(model.emotion_logits(logits), dim=-1).cpu().numpy()
        lo = start if start == 0 else start + half
        for u in np.flatnonzero((stream.ends >= lo) & (stream.ends < start + window) & ~done):
            probs[u] = emo[stream.ends[u] - start]
            done[u] = True
        if start + window >= len(stream.tokens):
            break
        start += half
    return probs


def summarize_scores(
    streams: Sequence[ConversationStream], probs: Sequence[np.ndarray], labels: Sequence[str]
) -> dict:
    """WA / UA / WF1 over every labelled utterance, plus accuracy on expressive and on
    non-expressive ("subtle") utterances when the corpus marks them."""
    gold, pred, flags = [], [], []
    for stream, p in zip(streams, probs, strict=True):
        keep = stream.labels != IGNORE
        gold.extend(stream.labels[keep].tolist())
        pred.extend(p[keep].argmax(axis=1).tolist())
        flags.extend(stream.expressive[keep].tolist())
    gold_a, pred_a, flags_a = np.asarray(gold), np.asarray(pred), np.asarray(flags)
    result = summarize([labels[g] for g in gold], [labels[p] for p in pred], labels)
    for name, value in (("expressive_accuracy", 1), ("subtle_accuracy", 0)):
        sel = flags_a == value
        result[name] = float((gold_a[sel] == pred_a[sel]).mean()) if sel.any() else None
    return result
