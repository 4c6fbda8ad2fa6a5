"""The RAVDESS reader, the labelled-CSV reader and ``dpm manifest ravdess|labels`` on fixture
trees that copy the real layouts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from dpm_worker.corpus import (
    RAVDESS_4CLASS,
    conversation_order,
    parse_actors,
    read_labelled,
    read_ravdess,
    validate_manifest,
)
from dpm_worker.errors import BadInputError, ConfigError
from pipelines.cli import main
from tests.fixtures.corpus_trees import build_ravdess_tree

FOUR = ["neutral", "happy", "sad", "angry"]


@pytest.fixture(scope="module")
def ravdess_root(tmp_path_factory):
    return build_ravdess_tree(tmp_path_factory.mktemp("ravdess"))


def test_one_conversation_per_actor_with_the_4class_map(ravdess_root):
    table, summary = read_ravdess(str(ravdess_root), mapping=RAVDESS_4CLASS)
    df = table.to_pandas()
    validate_manifest(table, str(ravdess_root), labels=FOUR)
    assert sorted(df.conversation_id.unique()) == [
        "ravdess_actor_01", "ravdess_actor_02", "ravdess_actor_19"
    ]  # fmt: skip
    per_actor = df[df.actor == 19]
    # neutral 4 + calm 8 -> neutral 12; happy, sad, angry 8 each: 36 of the actor's 60
    assert Counter(per_actor.emotion) == {"neutral": 12, "happy": 8, "sad": 8, "angry": 8}
    assert list(per_actor.utterance_index) == list(range(36))
    assert set(per_actor.speaker) == {"actor_19"} and set(per_actor.gender) == {"male"}
    assert set(df[df.actor == 2].gender) == {"female"}
    assert summary.kept == 108 and summary.conversations == 3
    assert summary.dropped_codes == {"disgust": 24, "fearful": 24, "surprised": 24}
    assert summary.dropped_reasons == {"not_a_speech_file": 6}  # the song take, .DS_Store
    # the emotion field of the file name is what was labelled
    codes = {"neutral": "01", "calm": "02", "happy": "03", "sad": "04", "angry": "05"}
    for row in df.itertuples():
        assert row.utterance_id.split("-")[2] == codes[row.corpus_label]
        assert row.audio_uri.endswith(row.utterance_id + ".wav")
    assert df.start_s.isna().all()  # whole files: never VAD-segmented (several rows)


def test_actor_selection_parent_folder_and_missing_actors(ravdess_root):
    table, _ = read_ravdess(str(ravdess_root.parent), actors=parse_actors("19-24")[:1])
    assert set(table.column("actor").to_pylist()) == {19}
    with pytest.raises(BadInputError, match=r"actor\(s\) \[20\] not found"):
        read_ravdess(str(ravdess_root), actors=[19, 20])
    assert parse_actors("1,3,5-7") == [1, 3, 5, 6, 7]
    for bad in ("0-3", "x", "20-30"):
        with pytest.raises(ConfigError):
            parse_actors(bad)


def test_orders_are_seeded_and_inertia_keeps_the_emotion(ravdess_root):
    a, _ = read_ravdess(str(ravdess_root), order="shuffled", seed=3)
    b, _ = read_ravdess(str(ravdess_root), order="shuffled", seed=3)
    c, _ = read_ravdess(str(ravdess_root), order="shuffled", seed=4)
    assert a.equals(b) and not a.equals(c)
    labels = ["neutral"] * 120 + ["happy"] * 80 + ["sad"] * 80 + ["angry"] * 80
    rng = np.random.default_rng(0)
    stays = {}
    for order in ("shuffled", "inertia"):
        picked = conversation_order(labels, order, rng)
        assert sorted(picked) == list(range(len(labels)))  # every file once
        seq = [labels[i] for i in picked]
        stays[order] = np.mean([x == y for x, y in zip(seq, seq[1:], strict=False)])
    # stay 0.7 while the pool lasts; a shuffle of these counts repeats about 0.26 of the time
    assert stays["inertia"] > 0.6 > 0.4 > stays["shuffled"]


def test_labelled_csv_reader(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "labels.csv").write_text(
        "file,speaker,emotion,conversation,note\n"
        "clips/a.wav,ann,Happy,call1,x\n"
        "clips/b.wav,bob,sad,call1,\n"
        "clips/c.wav,ann,bored,call1,\n"
        "/abs/d.wav,cy,angry,,y\n"
    )
    table, summary = read_labelled(
        str(tmp_path / "labels.csv"), mapping={"happy": "happy", "sad": "sad", "angry": "angry"}
    )
    df = table.to_pandas()
    assert list(df.conversation_id) == ["call1", "call1", "cy"]
    assert list(df.utterance_index) == [0, 1, 0]
    assert list(df.emotion) == ["happy", "sad", "angry"]
    assert df.audio_uri[0] == str(tmp_path / "clips" / "a.wav") and df.audio_uri[2] == "/abs/d.wav"
    assert table.column("note").to_pylist() == ["x", None, "y"]
    assert summary.dropped_codes == {"bored": 1}
    (tmp_path / "bad.csv").write_text("path,speaker,emotion\nx.wav,a,sad\n")
    with pytest.raises(BadInputError, match="missing \\['file'\\]"):
        read_labelled(str(tmp_path / "bad.csv"))


def test_cli_writes_the_manifest_and_checks_options(ravdess_root, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    code = main(["manifest", "ravdess", str(ravdess_root), "--actors", "19", "--order",
                 "inertia", "--seed", "5", "--out", str(out)])  # fmt: skip
    assert code == 0
    df = pd.read_parquet(out)
    assert len(df) == 36 and set(df.emotion) == set(FOUR)
    assert "kept 36 utterances in 1 conversations" in capsys.readouterr().out
    assert main(["manifest", "ravdess", str(ravdess_root), "--actors", "1", "--mapping",
                 "8class", "--out", str(out)]) == 0  # fmt: skip
    assert len(pd.read_parquet(out)) == 60
    assert main(["manifest", "iemocap", str(ravdess_root), "--actors", "1", "--out",
                 str(out)]) == 2  # fmt: skip
