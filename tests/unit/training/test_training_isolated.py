"""TrainConfig.isolated_fraction: batch rows that hold one utterance alone (utterance-mode reads)."""

import numpy as np
import pytest

from dpm_worker.errors import ConfigError
from dpm_worker.model import IGNORE, StreamVocab
from dpm_worker.training import TrainConfig, build_stream, isolate_rows, make_batch

VOCAB = StreamVocab(text_size=3, n_audio=32)


def utterances(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "speaker": "AB"[i % 2],
            "codes": rng.integers(0, 32, size=int(rng.integers(3, 7))).tolist(),
            "emotion": VOCAB.labels[int(rng.integers(4))],
            "expressive": True,
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("history", ["none", "predicted"])
def test_isolated_rows_hold_exactly_one_utterance(history):
    stream = build_stream(VOCAB, "c", utterances(12), history_labels=history, aux_previous=2)
    rng = np.random.default_rng(0)
    streams, old = [stream] * 40, [5] * 40
    starts, lengths = isolate_rows(streams, old, 1.0, rng)
    assert lengths is not None
    batch = make_batch(VOCAB, streams, starts, 64, history_labels=history, lengths=lengths)
    seen = set()
    for b in range(40):
        n = int(batch.attention_mask[b].sum())
        ids = batch.input_ids[b, :n]
        assert n == lengths[b]
        # a speaker token, audio codes, then <audio_end> as the very last token (nothing after)
        assert int(ids[0]) in (VOCAB.speaker_token(0), VOCAB.speaker_token(1))
        assert int(ids[-1]) == VOCAB.audio_end and int((ids == VOCAB.audio_end).sum()) == 1
        assert ((ids[1:-1] >= VOCAB.audio_offset) & (ids[1:-1] < VOCAB.speaker_offset)).all()
        emo = batch.emotion_targets[b]
        assert int((emo != IGNORE).sum()) == 1 and int(emo[n - 1]) != IGNORE
        u = int(np.flatnonzero(stream.ends == starts[b] + n - 1)[0])
        assert int(emo[n - 1]) == stream.labels[u]
        seen.add(u)
        # no earlier turn inside the row: the auxiliary heads get no target
        assert (batch.aux_targets[:, b] == IGNORE).all()
    assert len(seen) > 5  # different utterances are drawn


def test_isolated_fraction_zero_keeps_rows_and_rng_untouched():
    stream = build_stream(VOCAB, "c", utterances(12))
    rng = np.random.default_rng(3)
    starts, lengths = isolate_rows([stream] * 4, [1, 2, 3, 4], 0.0, rng)
    assert starts == [1, 2, 3, 4] and lengths is None
    assert rng.random() == np.random.default_rng(3).random()
    # a fraction in between turns some rows, not all
    starts, lengths = isolate_rows([stream] * 200, [1] * 200, 0.3, np.random.default_rng(1))
    assert lengths is not None
    isolated = sum(n < 2**62 for n in lengths)
    assert 30 < isolated < 90
    assert all(s == 1 for s, n in zip(starts, lengths, strict=True) if n >= 2**62)


def test_isolated_fraction_is_validated():
    assert TrainConfig().isolated_fraction == 0.0
    with pytest.raises(ConfigError, match="isolated_fraction.*1.5"):
        TrainConfig(isolated_fraction=1.5)
