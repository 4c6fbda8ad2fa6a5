"""Augmented copies of a labelled corpus: ids, counts, the clean copy, seeded bytes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from dpm_worker.audio import SAMPLE_RATE
from dpm_worker.corpus import ChannelConfig
from dpm_worker.errors import ConfigError
from dpm_worker.training import AugmentConfig, augment_corpus
from tests.unit.speech.test_speaker_levels import tone


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src")
    rows = []
    for i, (f0, emotion) in enumerate(
        [(120, "neutral"), (200, "happy"), (100, "sad"), (180, "angry")]
    ):
        sf.write(folder / f"u{i}.wav", tone(f0, 0.3, 0.6), SAMPLE_RATE, subtype="PCM_16")
        rows.append({"conversation_id": "c1", "utterance_index": i, "speaker": "s1",
                     "audio_uri": f"u{i}.wav", "emotion": emotion})  # fmt: skip
    pd.DataFrame(rows).to_parquet(folder / "manifest.parquet")
    return folder / "manifest.parquet"


def test_copies_are_new_voices_through_new_lines(source, tmp_path):
    config = AugmentConfig(copies=2, order="shuffled", channel=ChannelConfig(telephone_prob=1.0))
    table = augment_corpus(str(source), str(tmp_path / "a"), config, seed=3)
    df = pd.read_parquet(tmp_path / "a" / "manifest.parquet")
    assert len(df) == len(table) == 12
    assert sorted(df.conversation_id.unique()) == ["c1", "c1~aug1", "c1~aug2"]
    assert set(df[df["copy"] == 2].speaker) == {"s1~aug2"}
    for _, part in df.groupby("conversation_id"):
        assert list(part.utterance_index) == [0, 1, 2, 3]
        # every source utterance once, with its own label
        assert sorted(part.source_index) == [0, 1, 2, 3]
        labels = dict(zip(part.source_index, part.emotion, strict=True))
        assert labels == {0: "neutral", 1: "happy", 2: "sad", 3: "angry"}
    clean = df[df["copy"] == 0].sort_values("source_index")
    assert list(clean.source_index) == [0, 1, 2, 3] and set(clean.line) == {"source"}
    wave, rate = sf.read(tmp_path / "a" / clean.audio_uri.iloc[1], dtype="float32")
    assert rate == SAMPLE_RATE
    np.testing.assert_allclose(wave, tone(200, 0.3, 0.6), atol=2.0 / 32768)  # 16-bit FLAC
    copies = df[df["copy"] > 0]
    assert copies.line.str.startswith("tel-").all()
    assert (copies.cents.abs() <= 300).all() and copies.tempo.between(0.88, 1.12).all()
    aug, _ = sf.read(tmp_path / "a" / copies.audio_uri.iloc[0], dtype="float32")
    assert not np.allclose(aug[: min(aug.size, 4000)], 0.0)
    # the same seed gives the same bytes; another seed other voices
    augment_corpus(str(source), str(tmp_path / "b"), config, seed=3)
    augment_corpus(str(source), str(tmp_path / "c"), config, seed=4)
    for name in copies.audio_uri:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = pd.read_parquet(tmp_path / "c" / "manifest.parquet")
    assert not np.allclose(other[other["copy"] > 0].cents.to_numpy(), copies.cents.to_numpy())


def test_config_checks():
    with pytest.raises(ConfigError, match="order must be"):
        AugmentConfig(order="random")
    with pytest.raises(ConfigError, match="nothing to write"):
        AugmentConfig(copies=0, keep_clean=False)
    with pytest.raises(ConfigError, match="tempo"):
        AugmentConfig(tempo=(0.2, 1.0))
