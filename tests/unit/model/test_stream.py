"""The stream format's one rule for utterance starts and context fitting, shared by labeling
and training validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpm_worker.memory import LabelingConfig
from dpm_worker.model import EmotionModel, fit_context, history_budget, tail, utterance_start
from dpm_worker.training import build_stream, score_stream
from dpm_worker.utterance import Utterance
from tests.oracle.labeling import ConversationLabeler

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fit_context_truncation_rule() -> None:
    history = list(range(100, 110))
    tokens = [1, 5, 6, 7, 9]  # <spk> audio audio audio <audio_end>
    assert fit_context(history, tokens, 8) == ([107, 108, 109, *tokens], 3)
    assert fit_context(history, tokens, 5) == (tokens, 0)
    assert fit_context(history, tokens, 3) == ([1, 7, 9], 0)  # speaker kept, read at <audio_end>
    assert tail([1, 2, 3], 0) == [] and tail([1, 2, 3], 2) == [2, 3] and tail([1, 2], 5) == [1, 2]
    assert [history_budget(m, 16, 64) for m in ("utterance", "window", "full", "dpm")] == [
        0,
        16,
        64,
        16,
    ]


@pytest.mark.parametrize("labelled", [False, True])
def test_utterance_start_with_and_without_emotion_tokens(labelled: bool) -> None:
    model = EmotionModel.random(seed=0)
    utts = [
        {"speaker": s, "codes": np.arange(n) % 8, "emotion": "sad"}
        for s, n in (("a", 3), ("b", 5), ("a", 2))
    ]
    stream = build_stream(
        model.vocab, "c", utts, history_labels="predicted" if labelled else "none"
    )
    starts = [utterance_start(stream.tokens, stream.ends, u) for u in range(3)]
    step = int(labelled)  # the emotion token after each <audio_end>
    assert starts == [0, 5 + step, 5 + step + 7 + step]
    speaker_ids = range(model.vocab.speaker_offset, model.vocab.audio_end)
    assert all(int(stream.tokens[s]) in speaker_ids for s in starts)


def _conversation(rng: np.random.Generator) -> list[Utterance]:
    # The third utterance (200 codes) is longer than the model's context (64).
    sizes, speakers = (20, 40, 200, 15, 30, 10), "abacba"
    return [
        Utterance("c", i, s, audio_ids=rng.integers(0, 32, size=n))
        for i, (s, n) in enumerate(zip(speakers, sizes, strict=True))
    ]


@pytest.mark.parametrize("history_labels", ["none", "predicted"])
@pytest.mark.parametrize("mode", ["utterance", "window", "full"])
def test_validation_and_labeling_build_the_same_input_ids(
    mode: str, history_labels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = EmotionModel.random(seed=3, max_context=64, history_labels=history_labels)
    conv = _conversation(np.random.default_rng(5))
    fed: list[list[int]] = []
    emotion_probs = model.emotion_probs

    def record(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        assert input_ids.shape[0] == 1  # one utterance per call, so no padding to strip
        fed.append(input_ids[0].tolist())
        return emotion_probs(input_ids, attention_mask)

    monkeypatch.setattr(model, "emotion_probs", record)
    # Validation reads a training window's over-long utterance by its last part that fits, the
    # labeler's ``truncate`` rule (the product's default, ``chunks``, reads it in parts).
    config = LabelingConfig(mode=mode, window_tokens=24, long_utterances="truncate")
    labeler = ConversationLabeler(model, config)
    labeled = labeler.label_conversation(conv)
    by_labeling, fed[:] = list(fed), []
    dicts = [{"speaker": u.speaker, "codes": u.codes(), "emotion": None} for u in conv]
    stream = build_stream(model.vocab, "c", dicts, history_labels=history_labels)
    validated = score_stream(model, stream, mode, 24, batch_size=1)
    assert fed == by_labeling
    np.testing.assert_allclose(validated, np.stack([x.probs for x in labeled]), atol=1e-6)
    long_input = by_labeling[2]
    assert len(long_input) == 64
    assert long_input[0] == model.vocab.speaker_token(0)  # <spk> kept, as labeling keeps it
    assert long_input[-1] == model.vocab.audio_end
