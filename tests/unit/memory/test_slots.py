"""SlotLabeler: conversations admitted and released one at a time equal the reference path,
long utterances (chunks) and ``prior-ema`` included, and resume from exported states."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from dpm_worker.errors import ConfigError
from dpm_worker.memory import (
    LabelingConfig,
    MemoryConfig,
    SlotLabeler,
    label_batched,
)
from dpm_worker.utterance import Utterance
from tests.oracle.labeling import ConversationLabeler
from tests.unit.memory.test_batched import TARGETS, conversations, make_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = {
    **{t: LabelingConfig(mode="dpm", window_tokens=48, memory=m) for t, m in TARGETS.items()},
    # read_gate low enough that it fires on the random model (the batched prior applies it too)
    "prior-gated": LabelingConfig(mode="dpm", window_tokens=48, memory=MemoryConfig(read_gate=0.3)),
    "prior-ema": LabelingConfig(mode="prior-ema", window_tokens=48),
    "window-truncate": LabelingConfig(mode="window", window_tokens=48, long_utterances="truncate"),
}


def with_long_utterances(convs: list[list[Utterance]]) -> list[list[Utterance]]:
    """Every other conversation gets an utterance longer than the context (256 tokens)."""
    rng = np.random.default_rng(7)
    out = []
    for c, conv in enumerate(convs):
        conv = list(conv)
        if c % 2 == 0:
            at = len(conv) // 2
            conv[at] = replace(conv[at], audio_ids=rng.integers(0, 32, size=300 + 40 * c))
        out.append(conv)
    return out


def alone(config: LabelingConfig, convs):
    labeler = ConversationLabeler(make_model(), config)
    try:
        return [labeler.label_conversation(c) for c in convs]
    finally:
        labeler.close()


def run_slots(labeler: SlotLabeler, convs, states=None, stop_after=None):
    """Admit conversations as slots free up (continuous batching) until all are done, or
    until ``stop_after`` steps; returns ``{index: rows}`` of the finished ones."""
    waiting = list(range(len(convs)))
    done: dict[int, list] = {}
    steps = 0
    while waiting or labeler.keys:
        while waiting and labeler.free:
            n = waiting.pop(0)
            labeler.admit(n, convs[n], (states or {}).get(n))
        for key in [k for k in labeler.keys if labeler.finished(k)]:
            done[key] = labeler.release(key)
        if not labeler.keys:
            continue
        if stop_after is not None and steps == stop_after:
            break
        _, failed = labeler.advance()
        assert not failed
        steps += 1
    return done


def check_rows(got, want) -> None:
    assert [r.utterance.utterance_index for r in got] == [r.utterance.utterance_index for r in want]
    probs, ref = np.stack([r.probs for r in got]), np.stack([r.probs for r in want])
    assert np.abs(probs - ref).max() <= 1e-5
    assert [r.emotion for r in got] == [r.emotion for r in want]
    assert [(r.chunks, r.truncated) for r in got] == [(r.chunks, r.truncated) for r in want]
    assert [r.context_tokens for r in got] == [r.context_tokens for r in want]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_admitted_one_by_one_equals_alone(name: str) -> None:
    config = CONFIGS[name]
    convs = with_long_utterances(conversations(5, seed=5))
    reference = alone(config, convs)
    assert any(r.chunks > 1 or r.truncated for rows in reference for r in rows)
    labeler = SlotLabeler(make_model(), config, 3)
    done = run_slots(labeler, convs)
    for n, rows in enumerate(reference):
        check_rows(done[n], rows)


@pytest.mark.parametrize("target", ["prior", "audio-adamw-speaker"])
def test_two_conversations_resume_from_their_states_after_a_death(target: str) -> None:
    """Two conversations share a labeler that 'dies' mid-way (it is dropped); a new labeler on
    a new model resumes each from its own state, and the rows equal an uninterrupted run."""
    config = CONFIGS[target]
    convs = with_long_utterances(conversations(2, seed=8))
    convs = [c + c for c in convs]  # long enough to stop in the middle of both
    reference = alone(config, convs)
    first = SlotLabeler(make_model(), config, 2)
    run_slots(first, convs, stop_after=4)
    assert set(first.keys) == {0, 1}
    while not all(first.between_utterances(k) for k in first.keys):  # a chunk in progress
        first.advance()
    states = {k: first.export_state(k) for k in first.keys}
    assert all(0 < s.position < len(convs[k]) for k, s in states.items())
    assert any(name.startswith("slot.") for name in states[0].tensors)
    del first  # the actor died: nothing of it is used again

    second = SlotLabeler(make_model(), config, 3)
    done = run_slots(second, convs, states)
    for n, rows in enumerate(reference):
        check_rows(done[n], rows)


def test_states_move_between_the_batch_and_the_reference() -> None:
    """A state exported in a batch resumes alone, and one exported alone resumes in a batch."""
    config = CONFIGS["audio-adamw-speaker"]
    conv = conversations(1, seed=9)[0] * 2
    reference = alone(config, [conv])[0]
    batched = SlotLabeler(make_model(), config, 2)
    batched.admit("c", conv)
    while batched.position("c") < 5:
        batched.advance()
    state = batched.export_state("c")
    alone_labeler = ConversationLabeler(make_model(), config)
    check_rows(alone_labeler.label_conversation(conv, state), reference)

    taken = {}

    def after(rows, slots, history):
        if len(rows) == 7:
            taken["state"] = alone_labeler.export_state(rows, slots, history)

    alone_labeler.label_conversation(conv, after_utterance=after)
    resumed = SlotLabeler(make_model(), config, 2)
    resumed.admit("c", conv, taken["state"])
    check_rows(run_slots(resumed, [conv], {0: taken["state"]})[0], reference)


def test_admission_errors() -> None:
    config = CONFIGS["prior"]
    convs = conversations(3, seed=10)
    labeler = SlotLabeler(make_model(), config, 2)
    labeler.admit("a", convs[0])
    with pytest.raises(ConfigError, match="already"):
        labeler.admit("a", convs[0])
    labeler.admit("b", convs[1])
    with pytest.raises(ConfigError, match="slots are taken"):
        labeler.admit("c", convs[2])
    # an utterance without audio fails its own conversation only
    labeler.release("b")
    broken = [replace(convs[2][0], audio_ids=np.zeros(0, dtype=np.int64)), *convs[2][1:]]
    labeler.admit("c", broken)
    done, failed = labeler.advance()
    assert set(failed) == {"c"} and done == ["a"]
    assert labeler.position("a") == 1 and labeler.position("c") == 0


@pytest.mark.parametrize("name", ["prior-ema", "prior", "window-truncate"])
def test_label_batched_equals_alone_with_prior_ema_and_long_utterances(name: str) -> None:
    """``dpm eval --slots K`` labels through ``label_batched``: prior-ema is its own running
    average (not the window read) and long utterances are read in chunks, as alone."""
    config = CONFIGS[name]
    convs = with_long_utterances(conversations(5, seed=6))
    reference = alone(config, convs)
    got = label_batched(make_model(), config, convs, 3)
    for rows, want in zip(got, reference, strict=True):
        check_rows(rows, want)
    if name == "prior-ema":
        window = alone(replace(config, mode="window"), convs)
        assert any(
            np.abs(np.stack([r.probs for r in a]) - np.stack([r.probs for r in b])).max() > 1e-3
            for a, b in zip(got, window, strict=True)
        )


def test_slot_labeler_logs_one_debug_line_per_utterance(caplog) -> None:
    """``dpm bench faults`` counts recomputed utterances by these lines, with any slots."""
    convs = with_long_utterances(conversations(3, seed=8))
    with caplog.at_level(logging.DEBUG, logger="dpm_worker.memory.slots"):
        label_batched(make_model(), CONFIGS["prior"], convs, 2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().endswith(" labeled")]
    assert len(lines) == sum(len(c) for c in convs)
    assert lines[0].startswith(f"conversation {convs[0][0].conversation_id!r}: utterance 1 of ")


@pytest.mark.parametrize(
    "config",
    [
        replace(CONFIGS["prior"], history_cache="reuse"),
        replace(CONFIGS["prior"], history_cache="reuse", history_labels="predicted"),
        LabelingConfig(mode="window", window_tokens=48, history_cache="reuse"),
    ],
    ids=["prior", "prior-predicted-labels", "window"],
)
def test_resume_with_history_reuse_equals_the_uninterrupted_run(config) -> None:
    """With ``history_cache: reuse`` the cached states saw the whole conversation before
    them; a resumed labeler rebuilds them (replaying the earlier utterances), so its rows
    equal an uninterrupted reuse run, which here differs from recompute (the window slid)."""
    convs = [c + c for c in conversations(2, seed=8)]
    reference = label_batched(make_model(), config, convs, 2)
    first = SlotLabeler(make_model(), config, 2)
    run_slots(first, convs, stop_after=7)
    states = {k: first.export_state(k) for k in first.keys}
    # the window (48 tokens) has slid: more history than it holds before the resume point
    assert all(
        sum(len(u.codes()) + 2 for u in convs[k][: s.position]) > 48 for k, s in states.items()
    )
    del first
    done = run_slots(SlotLabeler(make_model(), config, 3), convs, states)
    for n, rows in enumerate(reference):
        check_rows(done[n], rows)
    recompute = label_batched(make_model(), replace(config, history_cache="recompute"), convs, 2)
    gap = max(
        np.abs(np.stack([r.probs for r in a]) - np.stack([r.probs for r in b])).max()
        for a, b in zip(reference, recompute, strict=True)
    )
    assert gap > 1e-4
