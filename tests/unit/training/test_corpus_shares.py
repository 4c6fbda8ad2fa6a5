"""Per-corpus weights of the training windows (train.corpus_pattern / corpus_weights)."""

from __future__ import annotations

import numpy as np
import pytest

from dpm_worker.errors import ConfigError
from dpm_worker.training import TrainConfig
from dpm_worker.training.batches import ConversationStream
from dpm_worker.training.windows import corpus_shares, sample_starts


def _stream(cid: str, length: int) -> ConversationStream:
    empty = np.zeros(0, dtype=np.int64)
    return ConversationStream(
        cid, np.zeros(length, dtype=np.int64), np.array([length - 1]), np.zeros(1, dtype=np.int64),
        np.zeros(1, dtype=np.int64), np.full(1, -1), empty.reshape(1, 0),
    )  # fmt: skip


STREAMS = [_stream("r_ravdess_actor_01", 300), _stream("r_ravdess_actor_02", 100),
           _stream("e_emovo_spk_f1", 100), _stream("se_conv_0001", 200)]  # fmt: skip


def test_corpora_are_balanced_by_default_and_weighted_when_named():
    shares = corpus_shares(STREAMS, "(ravdess|emovo|^s[er]_)", ())
    # three corpora at a third each; within RAVDESS by length (3:1)
    np.testing.assert_allclose(shares, [0.25, 1 / 12, 1 / 3, 1 / 3])
    shares = corpus_shares(STREAMS, "(ravdess|emovo|^s[er]_)", ("se_=0.5", "emovo=2"))
    np.testing.assert_allclose(shares, np.array([0.75, 0.25, 2.0, 0.5]) / 3.5)
    assert corpus_shares(STREAMS, "", ("emovo=2",)) is None  # no pattern: by length


def test_windows_follow_the_shares():
    shares = corpus_shares(STREAMS, "(ravdess|emovo|^s[er]_)", ("ravdess=0", "se_=0"))
    picked, _ = sample_starts(STREAMS, 64, 200, np.random.default_rng(0), 0.0, shares)
    assert {s.conversation_id for s in picked} == {"e_emovo_spk_f1"}


def test_weights_are_validated():
    with pytest.raises(ConfigError, match="corpus_weights"):
        TrainConfig(corpus_weights=("emovo",))
    with pytest.raises(ConfigError, match="corpus_pattern"):
        TrainConfig(corpus_pattern="(unclosed")
    with pytest.raises(ConfigError, match="weight 0"):
        corpus_shares(STREAMS, "(ravdess|emovo|^s[er]_)", ("ravdess=0", "emovo=0", "se_=0"))
