"""IEMOCAP and MELD layout readers on fixture trees that copy the real releases' layouts."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from dpm_worker.audio import clip_duration, read_segment
from dpm_worker.corpus import (
    IEMOCAP_4CLASS,
    MANIFEST_SCHEMA,
    MELD_4CLASS,
    load_mapping,
    read_iemocap,
    read_manifest,
    read_meld,
    validate_manifest,
    write_manifest,
)
from dpm_worker.errors import AudioError, BadInputError, ConfigError
from tests.fixtures.corpus_trees import (
    IEMOCAP_EXPECTED_ORDER,
    MELD_MEDIA_DIRS,
    build_iemocap_tree,
    build_meld_tree,
    meld_clip_seconds,
)

FOUR = ["neutral", "happy", "sad", "angry"]


@pytest.fixture(scope="module")
def iemocap_root(tmp_path_factory):
    return build_iemocap_tree(tmp_path_factory.mktemp("iemocap"))


@pytest.fixture(scope="module")
def meld_root(tmp_path_factory):
    return build_meld_tree(tmp_path_factory.mktemp("meld"), flac_for={("train", 0, 1)})


def _by_conversation(table, column):
    out: dict[str, list] = {}
    for cid, value in zip(
        table["conversation_id"].to_pylist(), table[column].to_pylist(), strict=True
    ):
        out.setdefault(cid, []).append(value)
    return out


def test_iemocap_dialogue_order_is_by_start_time_with_overlaps(iemocap_root):
    table, summary = read_iemocap(str(iemocap_root))
    ids = _by_conversation(table, "utterance_id")
    assert ids == {
        dialogue: [f"{dialogue}_{suffix}" for suffix in order]
        for dialogue, order in IEMOCAP_EXPECTED_ORDER.items()
    }
    assert _by_conversation(table, "utterance_index") == {
        "Ses01F_impro01": [0, 1, 2, 3],
        "Ses02M_script01_1": [0, 1, 2, 3, 4],
    }
    starts = _by_conversation(table, "start_s")["Ses02M_script01_1"]
    ends = _by_conversation(table, "end_s")["Ses02M_script01_1"]
    assert starts == sorted(starts)
    assert any(s < e for s, e in zip(starts[1:], ends[:-1], strict=True)), "overlap kept"
    assert summary.kept == table.num_rows == 9
    assert summary.conversations == 2


def test_iemocap_rows_match_annotation_lines(iemocap_root):
    table, _ = read_iemocap(str(iemocap_root))
    validate_manifest(table, "iemocap", labels=FOUR)
    assert table.schema.names[: len(MANIFEST_SCHEMA)] == MANIFEST_SCHEMA.names
    first = table.slice(0, 1).to_pylist()[0]
    assert first == {
        "conversation_id": "Ses01F_impro01",
        "utterance_index": 0,
        "speaker": "Ses01_F",
        "audio_uri": str(iemocap_root / "Session1/dialog/wav/Ses01F_impro01.wav"),
        "start_s": 0.52,
        "end_s": 2.1,
        "channel": None,
        "text": "Excuse me.",
        "emotion": "neutral",
        "rttm_uri": None,
        "utterance_id": "Ses01F_impro01_F000",
        "session": 1,
        "corpus_label": "neu",
        "valence": 2.5,
        "arousal": 2.5,
        "dominance": 2.5,
    }
    speakers = set(table["speaker"].to_pylist())
    assert speakers == {"Ses01_F", "Ses01_M", "Ses02_F", "Ses02_M"}


def test_iemocap_four_class_mapping_merges_exc_and_drops_the_rest(iemocap_root):
    table, summary = read_iemocap(str(iemocap_root))
    pairs = set(zip(table["corpus_label"].to_pylist(), table["emotion"].to_pylist(), strict=True))
    assert pairs == {("neu", "neutral"), ("hap", "happy"), ("exc", "happy"), ("sad", "sad"),
                     ("ang", "angry")}  # fmt: skip
    assert summary.dropped_codes == {"fru": 1, "xxx": 1}
    assert summary.kept_labels == {"neutral": 3, "happy": 3, "sad": 2, "angry": 1}
    assert "fru=1" in summary.format() and "xxx=1" in summary.format()


def test_iemocap_custom_mapping_drops_unmapped_never_relabels(iemocap_root):
    table, summary = read_iemocap(str(iemocap_root), mapping={"neu": "neutral", "fru": "angry"})
    assert sorted(table["corpus_label"].to_pylist()) == ["fru", "neu", "neu", "neu"]
    assert summary.dropped_codes == {"ang": 1, "exc": 2, "hap": 1, "sad": 2, "xxx": 1}
    assert summary.dropped == 7


def test_iemocap_session_filter(iemocap_root):
    table, _ = read_iemocap(str(iemocap_root), sessions=[2])
    assert set(table["conversation_id"].to_pylist()) == {"Ses02M_script01_1"}
    assert set(table["session"].to_pylist()) == {2}
    with pytest.raises(BadInputError, match=r"session\(s\) \[3\] not found"):
        read_iemocap(str(iemocap_root), sessions=[1, 3])


def test_iemocap_segments_decode_from_the_dialogue_recording(iemocap_root):
    table, _ = read_iemocap(str(iemocap_root), sessions=[1])
    row = table.slice(2, 1).to_pylist()[0]
    samples = read_segment(row["audio_uri"], row["start_s"], row["end_s"])
    assert abs(len(samples) / 16000 - (row["end_s"] - row["start_s"])) < 0.01


def test_iemocap_errors_name_the_file(tmp_path):
    with pytest.raises(BadInputError, match="no Session<N> folders"):
        read_iemocap(str(tmp_path))
    root = build_iemocap_tree(tmp_path)
    emo = root / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    text = emo.read_text()
    emo.write_text(text.replace("[7.0100 - 9.4000]", "[7.0100 - ]"))
    with pytest.raises(BadInputError, match=r"line \d+: malformed summary line") as info:
        read_iemocap(str(root))
    assert info.value.uri == str(emo)
    emo.write_text(text.replace("Ses01F_impro01_M002", "Ses01F_impro01_X002"))
    with pytest.raises(BadInputError, match="is not <Ses01F_impro01>_<F|M><NNN>"):
        read_iemocap(str(root))
    emo.write_text(text)
    (root / "Session2/dialog/wav/Ses02M_script01_1.wav").unlink()
    with pytest.raises(BadInputError, match="1 dialogue recording.* missing: Session2/dialog/wav"):
        read_iemocap(str(root))


def test_meld_dialogue_order_and_whole_clip_segments(meld_root):
    table, summary = read_meld(str(meld_root), "train", probe=clip_duration)
    validate_manifest(table, "meld")
    assert _by_conversation(table, "utterance_id") == {"train_dia0": [0, 1, 2, 3],
                                                        "train_dia1": [0, 1, 2, 3]}  # fmt: skip
    assert _by_conversation(table, "utterance_index") == {"train_dia0": [0, 1, 2, 3],
                                                           "train_dia1": [0, 1, 2, 3]}  # fmt: skip
    rows = table.to_pylist()
    for row in rows:
        assert row["start_s"] == 0.0
        assert row["end_s"] == pytest.approx(meld_clip_seconds(row["dialogue_id"],
                                                               row["utterance_id"]))  # fmt: skip
    assert rows[1]["audio_uri"] == str(meld_root / "train_splits/dia0_utt1.flac")
    assert rows[0]["audio_uri"] == str(meld_root / "train_splits/dia0_utt0.wav")
    assert summary.dropped_reasons == {"missing_audio": 1}  # dia1_utt4 has no media at all
    assert summary.dropped_codes == {}


def test_meld_csv_quoting_and_non_ascii_survive(meld_root):
    table, _ = read_meld(str(meld_root), "train", probe=clip_duration)
    texts = table["text"].to_pylist()
    assert 'He said "no", then left.' in texts
    assert "Caf\u00e9 au lait, anyone?" in texts
    assert (
        "Or! Or, we could go to the bank, close our accounts and cut them off at the source."
        in texts
    )
    row = table.slice(0, 1).to_pylist()[0]
    assert row["speaker"] == "Chandler" and row["episode_start"] == "00:16:16,059"
    assert row["sentiment"] == "neutral" and row["season"] == "8"


def test_meld_four_class_mapping_counts_dropped_codes(meld_root):
    table, summary = read_meld(str(meld_root), "train", probe=clip_duration, mapping=MELD_4CLASS)
    validate_manifest(table, "meld", labels=FOUR)
    assert summary.dropped_codes == {"surprise": 1, "fear": 1}
    assert sorted(set(table["emotion"].to_pylist())) == ["angry", "happy", "neutral", "sad"]
    # Indices stay contiguous in Utterance_ID order after drops.
    assert _by_conversation(table, "utterance_id")["train_dia1"] == [0, 1, 2]
    assert _by_conversation(table, "utterance_index")["train_dia1"] == [0, 1, 2]


@pytest.mark.parametrize("split", ["dev", "test"])
def test_meld_other_splits_use_their_media_folders(meld_root, split):
    table, _ = read_meld(str(meld_root), split, probe=clip_duration)
    assert set(table["conversation_id"].to_pylist()) == {f"{split}_dia0"}
    assert all(f"/{MELD_MEDIA_DIRS[split]}/" in uri for uri in table["audio_uri"].to_pylist())


def test_meld_mp4_only_lists_every_clip_and_says_how_to_extract(tmp_path):
    root = build_meld_tree(tmp_path, extracted=False)
    with pytest.raises(BadInputError) as info:
        read_meld(str(root), "train", probe=clip_duration)
    message = str(info.value)
    assert "8 MELD clip(s) have only the MP4" in message
    assert "dia0_utt0.mp4" in message and "and 3 more" in message
    assert "ffmpeg -i dia0_utt0.mp4 -vn -ac 1 -ar 16000 dia0_utt0.wav" in message
    assert info.value.uri == str(root / "train_splits")


def test_meld_audio_dir_option_and_unreadable_clip(tmp_path, meld_root):
    audio = tmp_path / "audio"
    audio.mkdir()
    for src in (meld_root / "dev_splits_complete").glob("*.wav"):
        (audio / src.name).write_bytes(src.read_bytes())
    table, _ = read_meld(str(meld_root), "dev", probe=clip_duration, audio_dir=str(audio))
    assert all(uri.startswith(str(audio)) for uri in table["audio_uri"].to_pylist())
    (audio / "dia0_utt1.wav").write_bytes(b"RIFF\x00\x00")
    with pytest.raises(AudioError, match="1 extracted clip.*dia0_utt1.wav"):
        read_meld(str(meld_root), "dev", probe=clip_duration, audio_dir=str(audio))


def test_meld_bad_csv(tmp_path):
    root = build_meld_tree(tmp_path)
    with pytest.raises(ConfigError, match="unknown MELD split"):
        read_meld(str(root), "validation", probe=clip_duration)
    csv_path = root / "train_sent_emo.csv"
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    csv_path.write_text("\n".join(lines[:3] + [lines[2]]) + "\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="line 4: dia0_utt1 repeats line 3"):
        read_meld(str(root), "train", probe=clip_duration)
    csv_path.write_text(lines[0].replace("Emotion", "Emo") + "\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"misses column\(s\) \['Emotion'\]") as info:
        read_meld(str(root), "train", probe=clip_duration)
    assert info.value.uri == str(csv_path)
    (root / "test_sent_emo.csv").unlink()
    with pytest.raises(BadInputError, match="test_sent_emo.csv not found"):
        read_meld(str(root), "test", probe=clip_duration)


def test_meld_cp1252_csv_is_decoded(tmp_path):
    root = build_meld_tree(tmp_path)
    path = root / "dev_sent_emo.csv"
    path.write_bytes(path.read_text(encoding="utf-8").encode("cp1252"))
    table, _ = read_meld(str(root), "dev", probe=clip_duration)
    assert table["text"].to_pylist()[0] == "Oh, it\u2019s so sad."


def test_load_mapping(tmp_path):
    assert load_mapping("4class", "iemocap") == dict(IEMOCAP_4CLASS)
    assert load_mapping("4class", "meld") == dict(MELD_4CLASS)
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"Joy": "happy", "anger": "angry"}))
    assert load_mapping(str(path), "meld") == {"joy": "happy", "anger": "angry"}
    with pytest.raises(ConfigError, match="unknown iemocap mapping '7class'"):
        load_mapping("7class", "iemocap")
    path.write_text(json.dumps({"joy": 3}))
    with pytest.raises(ConfigError, match="'joy': 3"):
        load_mapping(str(path), "meld")


def test_reader_output_round_trips_through_manifest_files(tmp_path, iemocap_root):
    table, _ = read_iemocap(str(iemocap_root))
    out = write_manifest(table, str(tmp_path / "manifest.parquet"))
    again = read_manifest(out, labels=FOUR)
    assert again.equals(table.sort_by([("conversation_id", "ascending"),
                                       ("utterance_index", "ascending")]))  # fmt: skip
    assert sf.info(again["audio_uri"][0].as_py()).samplerate == 16000


def test_cli_manifest_iemocap_writes_validated_manifest(tmp_path, iemocap_root, capsys):
    from pipelines.cli import main

    out = tmp_path / "out" / "manifest.parquet"
    summary = tmp_path / "summary.json"
    code = main(["manifest", "iemocap", str(iemocap_root), "--out", str(out),
                 "--sessions", "1", "--summary", str(summary)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "kept 4 utterances in 1 conversations" in printed and "fru=1, xxx=1" in printed
    table = read_manifest(str(out), labels=FOUR)
    assert set(table["conversation_id"].to_pylist()) == {"Ses01F_impro01"}
    assert json.loads(summary.read_text())["dropped_codes"] == {"fru": 1, "xxx": 1}


def test_cli_manifest_meld_csv_output_and_errors(tmp_path, meld_root, capsys):
    from pipelines.cli import main

    out = tmp_path / "meld.csv"
    args = ["manifest", "meld", str(meld_root), "--split", "dev", "--out", str(out)]
    assert main(args + ["--mapping", "4class"]) == 0
    assert "disgust=1" in capsys.readouterr().out
    assert read_manifest(str(out))["emotion"].to_pylist() == ["sad"]
    assert main(args + ["--mapping", "9class"]) == 2
    assert "unknown meld mapping '9class'" in capsys.readouterr().err
    assert main(args + ["--sessions", "1"]) == 2
    mp4_only = build_meld_tree(tmp_path / "raw", extracted=False)
    assert main(["manifest", "meld", str(mp4_only), "--out", str(out)]) == 2
    assert "ffmpeg -i dia0_utt0.mp4" in capsys.readouterr().err
