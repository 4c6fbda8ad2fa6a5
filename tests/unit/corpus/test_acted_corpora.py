"""The EMOVO and TurEV-DB readers, the shared acted-corpus ordering and ``dpm manifest
emovo|turev`` on fixture trees that copy the real layouts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from dpm_worker.audio import conversation_segments, read_recording
from dpm_worker.corpus import (
    EMOVO_SPEAKERS,
    TUREV_SPEAKERS,
    cast_manifest,
    order_conversation,
    parse_speakers,
    read_emovo,
    read_ravdess,
    read_turev,
    to_rows,
    validate_manifest,
)
from dpm_worker.errors import BadInputError, ConfigError
from pipelines.cli import main
from tests.fixtures.corpus_trees import (
    EMOVO_LAG,
    TUREV_WORDS,
    build_emovo_tree,
    build_ravdess_tree,
    build_turev_tree,
)

FOUR = ["neutral", "happy", "sad", "angry"]


@pytest.fixture(scope="module")
def emovo_root(tmp_path_factory):
    return build_emovo_tree(tmp_path_factory.mktemp("emovo"))


@pytest.fixture(scope="module")
def turev_root(tmp_path_factory):
    return build_turev_tree(tmp_path_factory.mktemp("turev"))


def test_emovo_4class_map_drops_with_counts_and_one_conversation_per_actor(emovo_root):
    table, summary = read_emovo(str(emovo_root))
    validate_manifest(table, str(emovo_root), labels=FOUR)
    df = table.to_pandas()
    assert list(df.conversation_id.unique()) == ["emovo_f1", "emovo_m2"]
    for speaker, rows in df.groupby("speaker"):
        assert list(rows.utterance_index) == list(range(56))  # 4 emotions x 14 sentences
        assert Counter(rows.emotion) == {e: 14 for e in FOUR}
        assert set(rows.gender) == {"female" if speaker == "emovo_f1" else "male"}
    assert summary.kept == 112 and summary.conversations == 2
    assert summary.dropped_codes == {"dis": 28, "pau": 28, "sor": 28}  # never silently
    assert summary.dropped_reasons == {"not_a_speech_file": 2}  # Thumbs.db
    maps = {"neu": "neutral", "gio": "happy", "tri": "sad", "rab": "angry"}
    for row in df.itertuples():
        code, speaker, sentence = row.utterance_id.split("-")
        assert maps[code] == row.emotion and code == row.corpus_label
        assert row.sentence == sentence and row.speaker == f"emovo_{speaker}"
        assert row.audio_uri.endswith(f"/{speaker}/{row.utterance_id}.wav")
    assert set(df.corpus) == {"emovo"} and df.start_s.isna().all()
    assert set(df.channel) == {0}


def test_emovo_reads_one_microphone_as_one_speaker(emovo_root, tmp_path):
    table, _ = read_emovo(str(emovo_root.parent), speakers=["m2"])  # the parent folder works
    rows = to_rows(cast_manifest(table, str(emovo_root)))
    first = rows[0]
    recording = read_recording(first.audio_uri)
    assert recording.samples.shape[0] == 2  # stereo on disk
    utterances = conversation_segments(rows[:3])
    assert {u.speaker for u in utterances} == {"emovo_m2"}
    assert {u.channel for u in utterances} == {0}  # (VAD, too, keeps a named channel's speaker)
    # channel 0 as it is, not a comb-filtered mix with the lagging second microphone
    whole = conversation_segments(rows[:2])[0].samples
    np.testing.assert_allclose(whole, recording.samples[0], atol=1e-6)
    raw, _ = sf.read(first.audio_uri)
    assert np.abs(raw[EMOVO_LAG:, 1] - 0.5 * raw[:-EMOVO_LAG, 0]).max() < 1e-3


def test_turev_folders_are_emotions_speakers_filter_and_drops(turev_root):
    table, summary = read_turev(str(turev_root.parent))  # the parent of Sound Source/
    validate_manifest(table, str(turev_root), labels=FOUR)
    df = table.to_pandas()
    assert list(df.conversation_id.unique()) == ["turev_1157", "turev_1234"]
    assert Counter(df[df.speaker == "turev_1157"].emotion) == {"angry": 3, "sad": 3}
    assert Counter(df[df.speaker == "turev_1234"].emotion) == {e: 3 for e in FOUR}
    assert list(df[df.speaker == "turev_1234"].utterance_index) == list(range(12))
    calm = df[df.corpus_label == "calm"]
    assert set(calm.emotion) == {"neutral"} and set(calm.corpus_code) == {"sk"}
    assert set(df.word) == set(TUREV_WORDS) and set(df.corpus) == {"turev"}
    assert summary.kept == 18 and summary.dropped_reasons == {"not_a_speech_file": 1}
    only, summary = read_turev(str(turev_root), speakers=["1157"])
    assert set(only.column("speaker").to_pylist()) == {"turev_1157"} and summary.kept == 6
    with pytest.raises(BadInputError, match=r"\['1358'\] have no files"):
        read_turev(str(turev_root), speakers=["1358"])
    # a folder of another emotion is counted as an unmapped code, not skipped silently
    (turev_root / "Fear").mkdir()
    sf.write(turev_root / "Fear" / "1234_kr_acik.wav", np.zeros(441, np.float32), 44100)
    try:
        _, summary = read_turev(str(turev_root))
        assert summary.dropped_codes == {"fear": 1}
    finally:
        (turev_root / "Fear" / "1234_kr_acik.wav").unlink()
        (turev_root / "Fear").rmdir()


def test_orders_are_seeded_per_speaker_for_every_reader(emovo_root, turev_root, tmp_path):
    readers = {
        "emovo": lambda **kw: read_emovo(str(emovo_root), **kw)[0],
        "turev": lambda **kw: read_turev(str(turev_root), **kw)[0],
        "ravdess": lambda **kw: read_ravdess(str(build_ravdess_tree(tmp_path, (1,))), **kw)[0],
    }
    for name, read in readers.items():
        a, b, c = read(seed=3), read(seed=3), read(seed=4)
        assert a.equals(b) and not a.equals(c), name
        inertia = read(order="inertia", seed=3).to_pandas()
        assert sorted(inertia.utterance_id) == sorted(a.column("utterance_id").to_pylist())
    # one speaker's order does not depend on which other speakers are read
    alone = read_emovo(str(emovo_root), speakers=["m2"], seed=3)[0]
    both = read_emovo(str(emovo_root), seed=3)[0].to_pandas()
    assert alone.column("utterance_id").to_pylist() == list(
        both[both.speaker == "emovo_m2"].utterance_id
    )


def test_order_conversation_and_speaker_lists():
    records = [{"emotion": e, "n": i} for i, e in enumerate(["sad"] * 30 + ["happy"] * 30)]
    ordered = order_conversation(records, "inertia", np.random.default_rng(0))
    assert [r["utterance_index"] for r in ordered] == list(range(60))
    assert sorted(r["n"] for r in ordered) == list(range(60))
    assert "utterance_index" not in records[0]  # the inputs are left alone
    seq = [r["emotion"] for r in ordered]
    assert np.mean([x == y for x, y in zip(seq, seq[1:], strict=False)]) > 0.6
    with pytest.raises(ConfigError, match="order must be"):
        order_conversation(records, "sorted", np.random.default_rng(0))
    assert parse_speakers(None, EMOVO_SPEAKERS) is None
    assert parse_speakers("m2, F1,m2", EMOVO_SPEAKERS) == ["f1", "m2"]
    assert parse_speakers("7895,1157", TUREV_SPEAKERS) == ["1157", "7895"]
    for bad in ("", "f4", "1157"):
        with pytest.raises(ConfigError):
            parse_speakers(bad, EMOVO_SPEAKERS)


def test_cli_manifest_emovo_and_turev(emovo_root, turev_root, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    assert main(["manifest", "emovo", str(emovo_root), "--speakers", "f1", "--order",
                 "inertia", "--seed", "2", "--out", str(out)]) == 0  # fmt: skip
    df = pd.read_parquet(out)
    assert len(df) == 56 and set(df.speaker) == {"emovo_f1"} and set(df.channel) == {0}
    printed = capsys.readouterr().out
    assert "kept 56 utterances in 1 conversations" in printed and "dis=14" in printed
    assert main(["manifest", "turev", str(turev_root), "--out", str(out)]) == 0
    assert set(pd.read_parquet(out).emotion) == set(FOUR)
    assert main(["manifest", "turev", str(turev_root), "--speakers", "f1", "--out",
                 str(out)]) == 2  # fmt: skip
    assert main(["manifest", "ravdess", str(turev_root), "--speakers", "f1", "--out",
                 str(out)]) == 2  # fmt: skip
    assert "applies to emovo/turev only" in capsys.readouterr().err
