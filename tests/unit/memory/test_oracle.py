"""The reference labeler (tests/oracle) keeps the invariants of DESIGN section 5 itself, so that
the engine, held to it row for row (test_batched, test_slots), keeps them too."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from dpm_worker.errors import ConfigError, LabelError
from dpm_worker.memory import (
    LabelingConfig,
    MemoryConfig,
)
from dpm_worker.model import EmotionModel
from dpm_worker.utterance import Utterance
from tests.oracle.labeling import ConversationLabeler
from tests.oracle.lora import TemporaryLoraMemory

# The paper's variant (audio writes, then read) with a large lr so that one write visibly moves
# a random model's outputs (the tests must fail if the memory did nothing).
FAST = MemoryConfig(
    lr=1e-2, steps_per_utterance=2, scope="conversation", write_target="audio", read_gate=1.0
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(seed: int = 0, max_context: int = 512) -> EmotionModel:
    return EmotionModel.random(seed=seed, max_context=max_context)


def utt(index: int, speaker: str, codes: np.ndarray) -> Utterance:
    return Utterance("c", index, speaker, audio_ids=np.asarray(codes, dtype=np.int64))


def conversation(seed: int, n: int = 8, lo: int = 10, hi: int = 30) -> list[Utterance]:
    rng = np.random.default_rng(seed)
    return [
        utt(i, "ab"[i % 2], rng.integers(0, 32, size=int(rng.integers(lo, hi)))) for i in range(n)
    ]


def probs(rows) -> np.ndarray:
    return np.stack([r.probs for r in rows])


def logits(model: EmotionModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.model(input_ids=ids).logits


def test_reset_restores_base_outputs_exactly() -> None:
    model = make_model()
    ids = torch.randint(0, model.vocab.size, (1, 40), generator=torch.Generator().manual_seed(1))
    base = logits(model, ids)
    memory = TemporaryLoraMemory(model.model, FAST)
    memory.activate(0)
    assert torch.equal(logits(model, ids), base)  # B = 0: a fresh memory is the backbone
    labels = ids.clone()
    labels[:, :20] = -100
    memory.write(0, ids, labels)
    assert not torch.equal(logits(model, ids), base)  # the write changed the function
    memory.reset()
    memory.activate(0)
    assert torch.equal(logits(model, ids), base)
    assert all(not state for state in memory._slots[0].optimizer.state.values())


def test_conversation_a_then_b_equals_b_alone() -> None:
    model = make_model()
    a, b = conversation(1), conversation(2)
    labeler = ConversationLabeler(model, LabelingConfig(mode="dpm", memory=FAST))
    labeler.label_conversation(a)
    after_a = labeler.label_conversation(b)
    fresh = ConversationLabeler(make_model(), LabelingConfig(mode="dpm", memory=FAST))
    alone = fresh.label_conversation(b)
    assert np.array_equal(probs(after_a), probs(alone))
    # and the memory did matter inside the conversation
    window = ConversationLabeler(make_model(), LabelingConfig(mode="window"))
    assert not np.array_equal(probs(alone), probs(window.label_conversation(b)))


def test_only_lora_parameters_change() -> None:
    model = make_model()
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    labeler = ConversationLabeler(model, LabelingConfig(mode="dpm", memory=FAST))
    memory = labeler.memory
    seen_change = []
    original_write = memory.write

    def spy(slot, input_ids, labels, emotion_ids=None):  # records that the adapter moved
        read = original_write(slot, input_ids, labels, emotion_ids)
        state = memory._slots[slot]
        seen_change.append(
            any(not torch.equal(p, q) for p, q in zip(state.params, state.initial, strict=True))
        )
        return read

    memory.write = spy
    labeler.label_conversation(conversation(3))
    # peft moved each adapted Linear's weight under ".base_layer"; values must be untouched.
    after = {k.replace(".base_layer", ""): v for k, v in model.model.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len([k for k in after if "lora_" in k]) > 0
    assert seen_change and seen_change[-1]
    assert all("lora_" in n for n, p in model.model.named_parameters() if p.requires_grad)


def test_same_seed_same_rows_and_memory_seed_matters() -> None:
    conv = conversation(4)
    first = ConversationLabeler(make_model(), LabelingConfig(memory=FAST)).label_conversation(conv)
    second = ConversationLabeler(make_model(), LabelingConfig(memory=FAST)).label_conversation(conv)
    assert [r.emotion for r in first] == [r.emotion for r in second]
    assert np.array_equal(probs(first), probs(second))
    other = replace(FAST, seed=7)
    third = ConversationLabeler(make_model(), LabelingConfig(memory=other)).label_conversation(conv)
    assert not np.array_equal(probs(first), probs(third))


def test_zero_steps_dpm_is_window_mode() -> None:
    conv = conversation(5)
    idle = MemoryConfig(steps_per_utterance=0)
    dpm = ConversationLabeler(make_model(), LabelingConfig(mode="dpm", memory=idle))
    window = ConversationLabeler(make_model(), LabelingConfig(mode="window"))
    # The prior path renormalises a uniform prior: equal up to float rounding.
    np.testing.assert_allclose(
        probs(dpm.label_conversation(conv)), probs(window.label_conversation(conv)), atol=1e-6
    )


def test_dpm_leaves_other_modes_untouched() -> None:
    model, conv = make_model(), conversation(6)
    window_before = ConversationLabeler(model, LabelingConfig(mode="window")).label_conversation(
        conv
    )
    ConversationLabeler(model, LabelingConfig(mode="dpm", memory=FAST)).label_conversation(conv)
    window_after = ConversationLabeler(model, LabelingConfig(mode="window")).label_conversation(
        conv
    )
    assert np.array_equal(probs(window_before), probs(window_after))


def test_speaker_scope_routes_memory_by_speaker() -> None:
    # speaker a talks three times, then b for the first time: b's own memory is still empty.
    rng = np.random.default_rng(7)
    conv = [utt(i, s, rng.integers(0, 32, size=20)) for i, s in enumerate("aaab")]
    window = ConversationLabeler(make_model(), LabelingConfig(mode="window"))
    by_speaker = replace(FAST, scope="speaker")
    shared = ConversationLabeler(make_model(), LabelingConfig(memory=FAST))
    routed = ConversationLabeler(make_model(), LabelingConfig(memory=by_speaker))
    w, s, r = (x.label_conversation(conv) for x in (window, shared, routed))
    # b's write is its own first one, so only the other speaker's writes can separate the modes
    assert not np.array_equal(s[3].probs, r[3].probs)
    assert len(routed.memory._slots) == 2 and len(shared.memory._slots) == 1
    assert not np.array_equal(w[3].probs, r[3].probs)  # b's own write still applies


def test_utterance_longer_than_window_and_context() -> None:
    model = make_model(max_context=64)
    rng = np.random.default_rng(8)
    conv = [
        utt(0, "a", rng.integers(0, 32, size=20)),
        utt(1, "b", rng.integers(0, 32, size=40)),  # longer than the window (16)
        utt(2, "a", rng.integers(0, 32, size=200)),  # longer than max_context
    ]
    for mode in ("utterance", "window", "full", "dpm"):
        cfg = LabelingConfig(mode=mode, window_tokens=16, memory=FAST)
        rows = ConversationLabeler(model, cfg).label_conversation(conv)
        assert [r.utterance.utterance_index for r in rows] == [0, 1, 2]
        assert all(np.isclose(r.probs.sum(), 1.0, atol=1e-5) for r in rows)
        assert rows[2].context_tokens <= 64
        assert (rows[2].chunks, rows[2].truncated) == (4, False)  # 202 tokens in 4 chunks of 62
        assert [(r.chunks, r.truncated) for r in rows[:2]] == [(1, False), (1, False)]
        truncate = replace(cfg, long_utterances="truncate")
        rows = ConversationLabeler(model, truncate).label_conversation(conv)
        assert (rows[2].chunks, rows[2].truncated, rows[2].context_tokens) == (1, True, 64)
    rows = ConversationLabeler(
        model, LabelingConfig(mode="window", window_tokens=16)
    ).label_conversation(conv)
    assert rows[1].context_tokens == 16 + 42


def test_chunks_are_read_in_turn_and_averaged_by_length() -> None:
    """A 100-token utterance in a 52-token context is two 50-token chunks, each read as a turn
    of its speaker: the result is their mean, and the next utterance sees them in its history."""
    model = make_model(max_context=52)
    rng = np.random.default_rng(3)
    long_codes = rng.integers(0, 32, size=100)
    after = utt(1, "b", rng.integers(0, 32, size=10))
    for mode in ("window", "dpm"):
        cfg = LabelingConfig(mode=mode, window_tokens=30, memory=FAST)
        rows = ConversationLabeler(model, cfg).label_conversation([utt(0, "a", long_codes), after])
        parts = ConversationLabeler(model, cfg).label_conversation(
            [
                utt(0, "a", long_codes[:50]),
                utt(0, "a", long_codes[50:]),
                after,
            ]
        )
        np.testing.assert_allclose(rows[0].probs, (parts[0].probs + parts[1].probs) / 2, atol=1e-6)
        np.testing.assert_allclose(rows[1].probs, parts[2].probs, atol=1e-6)
        assert rows[0].chunks == 2


@pytest.mark.parametrize("mode", ["window", "dpm"])
def test_cost_per_utterance_does_not_grow_with_position(mode: str) -> None:
    model = make_model()
    fed: list[int] = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(int(kwargs["input_ids"].shape[1])),
        with_kwargs=True,
    )
    rng = np.random.default_rng(9)
    conv = [utt(i, "ab"[i % 2], rng.integers(0, 32, size=20)) for i in range(40)]
    labeler = ConversationLabeler(model, LabelingConfig(mode=mode, window_tokens=64, memory=FAST))
    try:
        rows = labeler.label_conversation(conv)
    finally:
        hook.remove()
    calls = 1 + (FAST.steps_per_utterance if mode == "dpm" else 0)
    per_utterance = [sum(fed[i * calls : (i + 1) * calls]) for i in range(len(conv))]
    assert len(fed) == calls * len(conv)
    assert per_utterance[5] == per_utterance[20] == per_utterance[-1] == calls * (64 + 22)
    assert rows[-1].context_tokens == 64 + 22


def test_full_mode_grows_until_max_context() -> None:
    model = make_model(max_context=200)
    rng = np.random.default_rng(10)
    conv = [utt(i, "ab"[i % 2], rng.integers(0, 32, size=20)) for i in range(20)]
    rows = ConversationLabeler(model, LabelingConfig(mode="full")).label_conversation(conv)
    sizes = [r.context_tokens for r in rows]
    assert sizes[:3] == [22, 44, 66] and sizes[-1] == 200


def test_bad_configs_and_inputs_raise_typed_errors() -> None:
    with pytest.raises(ConfigError, match="nope"):
        LabelingConfig(mode="nope")
    with pytest.raises(ConfigError, match="-1"):
        LabelingConfig(window_tokens=-1)
    with pytest.raises(ConfigError, match="rank"):
        MemoryConfig(rank=0)
    with pytest.raises(ConfigError, match="everything"):
        MemoryConfig(scope="everything")
    with pytest.raises(ConfigError, match="memory.optimizer.*lion"):
        MemoryConfig(optimizer="lion")
    with pytest.raises(ConfigError, match="memory.prior_input.*nowhere"):
        MemoryConfig(prior_input="nowhere")
    with pytest.raises(ConfigError, match="memory.prior_weight"):
        MemoryConfig(prior_weight=-1.0)
    with pytest.raises(ConfigError, match="history_labels"):
        LabelingConfig(memory=MemoryConfig(write_target="audio+emotion"), history_labels="none")
    with pytest.raises(ConfigError, match="matched no layer"):
        ConversationLabeler(
            make_model(), LabelingConfig(memory=MemoryConfig(target_modules=("nothing",)))
        ).label_conversation(conversation(11, n=2))
    labeler = ConversationLabeler(make_model(), LabelingConfig(mode="window"))
    with pytest.raises(LabelError, match="utterance 3"):
        labeler.label_conversation([utt(3, "a", np.array([1, 99]))])
    with pytest.raises(LabelError, match="no audio"):
        labeler.label_conversation([utt(4, "a", np.array([], dtype=np.int64))])


def test_audio_plus_emotion_writes_on_predicted_history() -> None:
    model = EmotionModel.random(seed=0, history_labels="predicted")
    cfg = replace(FAST, write_target="audio+emotion")
    rows = ConversationLabeler(model, LabelingConfig(memory=cfg)).label_conversation(
        conversation(12)
    )
    plain = ConversationLabeler(model, LabelingConfig(memory=FAST)).label_conversation(
        conversation(12)
    )
    assert len(rows) == 8 and not np.array_equal(probs(rows), probs(plain))


def test_audio_plus_prediction_reads_before_it_writes() -> None:
    conv = conversation(13)
    cfg = MemoryConfig(
        lr=1e-2, write_target="audio+prediction", confidence_gate=0.0, scope="conversation"
    )
    rows = ConversationLabeler(make_model(), LabelingConfig(memory=cfg)).label_conversation(conv)
    window = ConversationLabeler(make_model(), LabelingConfig(mode="window"))
    base = window.label_conversation(conv)
    # the first read sees an empty memory: the backbone's own answer
    assert np.allclose(rows[0].probs, base[0].probs, atol=1e-5)
    assert not np.allclose(rows[-1].probs, base[-1].probs, atol=1e-3)
    gated = MemoryConfig(
        lr=1e-2, write_target="audio+prediction", confidence_gate=1.0, scope="conversation"
    )
    audio_only = ConversationLabeler(make_model(), LabelingConfig(memory=gated))
    assert not np.array_equal(probs(audio_only.label_conversation(conv)), probs(rows))
    with pytest.raises(ConfigError, match="confidence_gate"):
        MemoryConfig(confidence_gate=1.5)


def test_read_gate_keeps_the_backbone_answer_when_it_is_confident() -> None:
    conv = conversation(14)
    window = ConversationLabeler(make_model(), LabelingConfig(mode="window"))
    base = probs(window.label_conversation(conv))
    always_base = replace(FAST, read_gate=0.0)
    gated = ConversationLabeler(make_model(), LabelingConfig(memory=always_base))
    assert np.array_equal(probs(gated.label_conversation(conv)), base)
    never = FAST
    memory_only = ConversationLabeler(make_model(), LabelingConfig(memory=never))
    assert not np.array_equal(probs(memory_only.label_conversation(conv)), base)


def test_default_config_keeps_the_invariants() -> None:
    # the shipped defaults (speaker scope, audio writes) with a large lr, plus a read gate
    cfg = replace(MemoryConfig(), lr=1e-2, confidence_gate=0.0, read_gate=0.99)
    model = make_model()
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    a, b = conversation(15), conversation(16)
    labeler = ConversationLabeler(model, LabelingConfig(memory=cfg))
    labeler.label_conversation(a)
    after_a = labeler.label_conversation(b)
    alone = ConversationLabeler(make_model(), LabelingConfig(memory=cfg)).label_conversation(b)
    assert np.array_equal(probs(after_a), probs(alone))
    after = {k.replace(".base_layer", ""): v for k, v in model.model.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    window = ConversationLabeler(make_model(), LabelingConfig(mode="window"))
    assert not np.array_equal(probs(alone), probs(window.label_conversation(b)))


PRIOR = MemoryConfig(lr=3e-2, scope="speaker", write_target="prior", prior_weight=1.0)


@pytest.mark.parametrize("prior_input", ["speaker", "history"])
def test_prior_memory_starts_as_the_backbone_and_keeps_the_invariants(prior_input: str) -> None:
    conv = conversation(11, n=10)
    window = ConversationLabeler(make_model(), LabelingConfig(mode="window"))
    base = probs(window.label_conversation(conv))
    model = make_model()
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    memory = replace(PRIOR, prior_input=prior_input)
    labeler = ConversationLabeler(model, LabelingConfig(mode="dpm", memory=memory))
    rows = probs(labeler.label_conversation(conv))
    # A speaker's first turn: a reset adapter changes nothing, so the prior is uniform.
    np.testing.assert_allclose(rows[:2], base[:2], atol=1e-5)
    assert not np.allclose(rows[2:], base[2:], atol=1e-3)  # later turns: the prior acts
    after = {k.replace(".base_layer", ""): v for k, v in model.model.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # only adapters move
    # Conversation A never changes conversation B, and the same seed gives the same rows.
    labeler.label_conversation(conversation(12))
    np.testing.assert_array_equal(probs(labeler.label_conversation(conv)), rows)


@pytest.mark.parametrize(
    "memory", [PRIOR, replace(PRIOR, optimizer="sgd", lr=1.0, target_modules=("lm_head",))]
)
def test_prior_memory_follows_the_speaker_reads(memory: MemoryConfig) -> None:
    rng = np.random.default_rng(0)
    same = rng.integers(0, 32, size=20)
    # Speaker a says the same thing 8 times; speaker b says random things in between.
    conv = []
    for i in range(16):
        codes = same if i % 2 == 0 else rng.integers(0, 32, size=20)
        conv.append(utt(i, "ab"[i % 2], codes))
    window = probs(
        ConversationLabeler(make_model(), LabelingConfig(mode="window")).label_conversation(conv)
    )
    dpm = probs(
        ConversationLabeler(
            make_model(), LabelingConfig(mode="dpm", memory=memory)
        ).label_conversation(conv)
    )
    top = int(np.argmax(window[14]))
    # The prior learnt a's reads, so the last turn is read with more confidence in that label.
    assert dpm[14, top] > window[14, top] + 0.02


def test_prior_weight_zero_is_the_backbone_read() -> None:
    conv = conversation(13)
    window = probs(
        ConversationLabeler(make_model(), LabelingConfig(mode="window")).label_conversation(conv)
    )
    off = replace(PRIOR, prior_weight=0.0)
    dpm = probs(
        ConversationLabeler(
            make_model(), LabelingConfig(mode="dpm", memory=off)
        ).label_conversation(conv)
    )
    np.testing.assert_allclose(dpm, window, atol=1e-5)


def test_prior_ema_multiplies_the_window_read_by_the_speakers_running_average() -> None:
    conv = conversation(11, n=9)
    model = make_model()
    window = probs(
        ConversationLabeler(model, LabelingConfig(mode="window")).label_conversation(conv)
    )
    config = LabelingConfig(mode="prior-ema", ema_rate=0.4, ema_weight=0.8)
    ema = ConversationLabeler(model, config)
    got = probs(ema.label_conversation(conv))
    average: dict[str, np.ndarray] = {}
    for i, u in enumerate(conv):  # the closed form, on the window mode's saved reads
        read = window[i].astype(np.float64)
        if u.speaker not in average:
            expected, average[u.speaker] = read, read
        else:
            expected = read * average[u.speaker] ** 0.8
            expected /= expected.sum()
            average[u.speaker] = 0.6 * average[u.speaker] + 0.4 * read
        np.testing.assert_allclose(got[i], expected, atol=1e-5)
    assert not np.allclose(got, window, atol=1e-3)
    # no state leaks across conversations; beta 0 is the window read
    np.testing.assert_array_equal(probs(ema.label_conversation(conv)), got)
    flat = ConversationLabeler(model, replace(config, ema_weight=0.0))
    np.testing.assert_allclose(probs(flat.label_conversation(conv)), window, atol=1e-6)
    with pytest.raises(ConfigError, match="ema_rate"):
        LabelingConfig(mode="prior-ema", ema_rate=0.0)
