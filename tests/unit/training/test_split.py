"""The training/validation split: by conversation, and by group when ``train.val_group`` says
which conversations are the same speakers (an actor's orders and augmented copies)."""

from __future__ import annotations

import re

import pytest

from dpm_worker.errors import ConfigError
from dpm_worker.training import TrainConfig, split_conversations

ACTORS = [f"{order}_ravdess_actor_{a:02d}{copy}" for order in ("rs", "ri") for a in range(1, 19)
          for copy in ("", "~aug1", "~aug2")]  # fmt: skip
SYNTH = [f"se_conv_{i:04d}" for i in range(30)]


def test_plain_split_is_seeded_disjoint_and_sized() -> None:
    ids = ACTORS + SYNTH
    train, val = split_conversations(ids, 0.1, seed=0)
    assert (train, val) == split_conversations(list(reversed(ids)), 0.1, seed=0)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(ids)
    assert len(val) == round(len(ids) * 0.1)
    assert split_conversations(ids, 0.1, seed=1) != (train, val)


def test_grouped_split_never_puts_one_actor_on_both_sides() -> None:
    ids = ACTORS + SYNTH
    train, val = split_conversations(ids, 0.1, seed=0, group=r"actor_(\d+)")
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(ids)
    actor = re.compile(r"actor_(\d+)")
    train_actors = {m.group(1) for c in train if (m := actor.search(c))}
    val_actors = {m.group(1) for c in val if (m := actor.search(c))}
    assert train_actors.isdisjoint(val_actors)
    # whole groups: every held-out actor has all 6 of its conversations in validation
    for a in val_actors:
        assert sum(actor.search(c) is not None and actor.search(c).group(1) == a for c in val) == 6
    # at least the asked fraction, and no more than one group beyond it
    assert round(len(ids) * 0.1) <= len(val) < round(len(ids) * 0.1) + 6
    assert (train, val) == split_conversations(ids, 0.1, seed=0, group=r"actor_(\d+)")


def test_ids_without_a_match_are_groups_of_their_own() -> None:
    train, val = split_conversations(SYNTH, 0.2, seed=3, group=r"actor_(\d+)")
    assert len(val) == 6 and len(train) == 24


def test_one_group_cannot_be_validated() -> None:
    ids = [f"actor_01_take{i}" for i in range(5)]
    with pytest.raises(ConfigError, match="one group"):
        split_conversations(ids, 0.5, seed=0, group=r"actor_\d+")


def test_invalid_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="val_group"):
        TrainConfig(val_group="actor_(")
