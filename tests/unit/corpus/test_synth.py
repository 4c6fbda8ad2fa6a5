"""The synthetic corpus generator: reproducible bytes, a valid manifest, exact segments, and
emotions that are rendered in prosody relative to each speaker's baseline."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from dpm_worker.audio import read_segment
from dpm_worker.corpus import (
    DEFAULT_LABELS,
    EMOTION_SHIFTS,
    MANIFEST_SCHEMA,
    SynthConfig,
    generate_corpus,
    next_mood,
    pitch_parameter,
    read_manifest,
    render_prosody,
    sample_speaker,
    synthesize,
)
from dpm_worker.errors import ConfigError
from pipelines.cli import main as cli_main

# The acceptance run: dpm synth --out D --conversations 4 --seed 11 --min-utterances 20
# --max-utterances 30 (85 utterances, a few seconds).
MUST_SHOW = [
    "--conversations",
    "4",
    "--seed",
    "11",
    "--min-utterances",
    "20",
    "--max-utterances",
    "30",
]


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert cli_main(["synth", "--out", str(out), "--workers", "1", *MUST_SHOW]) == 0
    return out


def test_same_arguments_same_bytes_whatever_the_workers(corpus: Path, tmp_path: Path) -> None:
    assert cli_main(["synth", "--out", str(tmp_path), "--workers", "2", *MUST_SHOW]) == 0
    assert digests(tmp_path) == digests(corpus)
    assert set(digests(corpus)) == {"manifest.parquet"} | {
        f"audio/conv_000{i}.flac" for i in range(4)
    }


def test_labels_persist_within_a_speaker_and_expressive_fraction_is_as_asked(
    corpus: Path,
) -> None:
    rows = pq.read_table(corpus / "manifest.parquet").to_pylist()
    assert len(rows) >= 4 * 20
    last: dict[str, str] = {}
    repeats = []
    for row in rows:  # rows are in dialogue order
        if row["speaker"] in last:
            repeats.append(last[row["speaker"]] == row["emotion"])
        last[row["speaker"]] = row["emotion"]
    assert np.mean(repeats) >= 0.7
    expressive = np.mean([row["expressive"] for row in rows])
    assert abs(expressive - 0.5) < 0.1  # binomial sd at n=85 is 0.054
    assert {row["emotion"] for row in rows} <= set(DEFAULT_LABELS)


def test_another_seed_gives_other_audio(corpus: Path, tmp_path: Path) -> None:
    other = SynthConfig(conversations=1, seed=4, min_utterances=4, max_utterances=6)
    generate_corpus(str(tmp_path), other, workers=1)
    assert digests(tmp_path)["audio/conv_0000.flac"] != digests(corpus)["audio/conv_0000.flac"]


def test_manifest_has_the_canonical_schema_and_no_timestamps(corpus: Path) -> None:
    parquet = pq.ParquetFile(corpus / "manifest.parquet")
    schema = parquet.schema_arrow
    for field in MANIFEST_SCHEMA:
        assert schema.field(field.name).type == field.type, field.name
    assert schema.field("expressive").type.equals("bool")
    # no pandas blob, no time of writing: only the generator's provenance
    assert set(schema.metadata) == {b"dpm.synth_config", b"dpm.synth_espeak"}
    assert b'"seed": 11' in schema.metadata[b"dpm.synth_config"]
    assert schema.metadata[b"dpm.synth_espeak"].startswith(b"eSpeak NG")
    table = read_manifest(str(corpus), labels=DEFAULT_LABELS)  # strict validation
    assert table.num_rows == parquet.metadata.num_rows
    raw = parquet.read()
    assert all(uri.startswith("audio/conv_") for uri in raw.column("audio_uri").to_pylist())


def test_segments_decode_to_the_stated_length_on_their_speakers_channel(corpus: Path) -> None:
    table = pq.read_table(corpus / "manifest.parquet").to_pylist()
    by_conv: dict[str, list[dict]] = {}
    for row in table:
        by_conv.setdefault(row["conversation_id"], []).append(row)
    for conv, rows in by_conv.items():
        audio, sr = sf.read(corpus / rows[0]["audio_uri"], dtype="float32")
        assert sr == 16_000 and audio.ndim == 2 and audio.shape[1] == 2
        assert [r["utterance_index"] for r in rows] == list(range(len(rows)))
        assert len({r["speaker"] for r in rows}) == 2
        for row, following in zip(rows, rows[1:] + [None], strict=True):
            n = round((row["end_s"] - row["start_s"]) * sr)
            assert 1.5 <= n / sr <= 5.0
            segment = read_segment(
                str(corpus / row["audio_uri"]), row["start_s"], row["end_s"], row["channel"]
            )
            assert segment.shape == (n,)
            first = round(row["start_s"] * sr)
            speech = audio[first : first + n, row["channel"]]
            other = audio[first : first + n, 1 - row["channel"]]
            assert np.sqrt(np.mean(speech**2)) > 10 * np.sqrt(np.mean(other**2)), conv
            if following is not None:  # silence between turns, no overlap
                assert following["start_s"] > row["end_s"]


def test_expressive_fraction_follows_the_argument(tmp_path: Path) -> None:
    for prob in (0.0, 1.0):
        config = SynthConfig(
            conversations=1, seed=1, min_utterances=4, max_utterances=4, expressive_prob=prob
        )
        table = generate_corpus(str(tmp_path / str(prob)), config)
        assert set(table.column("expressive").to_pylist()) == {bool(prob)}


def test_mood_chain_mostly_stays_and_follows_the_partner() -> None:
    config = SynthConfig(conversations=1, seed=0, mood_stay=0.8, mood_pull=1.0)
    rng = np.random.default_rng(0)
    moves = Counter(next_mood(rng, "sad", "happy", config) for _ in range(4000))
    assert set(moves) == {"sad", "happy"}
    assert 0.77 < moves["sad"] / 4000 < 0.83
    config = SynthConfig(conversations=1, seed=0, mood_stay=0.0, mood_pull=0.0)
    jumps = Counter(next_mood(rng, "sad", "happy", config) for _ in range(3000))
    assert set(jumps) == set(DEFAULT_LABELS) - {"sad"}


def test_emotions_shift_prosody_relative_to_the_speaker_baseline() -> None:
    rng = np.random.default_rng(5)
    speaker = sample_speaker(rng, "s", 0, spread=1.0, female_prob=0.0)
    text = "The report was moved to the second shelf on Tuesday."
    level, duration, prosodies = {}, {}, {}
    for emotion in DEFAULT_LABELS:
        prosody = render_prosody(speaker, emotion, 1.0, rng, jitter=0.0)
        audio = synthesize(text, speaker.voice, prosody, 16_000)
        frames = audio[: audio.size // 320 * 320].reshape(-1, 320)
        energy = np.mean(frames**2, axis=1)
        level[emotion] = 10 * np.log10(np.mean(energy[energy > energy.max() * 1e-3]))
        duration[emotion] = audio.size / 16_000
        prosodies[emotion] = prosody
    # Loudness is applied exactly: the measured level is the rendered one (to 0.1 dB).
    for emotion, prosody in prosodies.items():
        assert abs(level[emotion] - prosody.level_dbfs) < 0.1
    assert level["angry"] > level["happy"] > level["neutral"] > level["sad"]
    assert duration["sad"] > duration["neutral"] > duration["angry"]
    assert prosodies["happy"].f0_hz > prosodies["neutral"].f0_hz > prosodies["sad"].f0_hz
    assert (
        prosodies["happy"].range_pct > prosodies["neutral"].range_pct > prosodies["sad"].range_pct
    )
    # A non-expressive utterance is the speaker's neutral prosody, whatever the mood.
    flat = render_prosody(speaker, "angry", 0.0, rng, jitter=0.0)
    assert flat == prosodies["neutral"]


def test_speaker_baselines_spread_as_much_as_emotions_shift() -> None:
    rng = np.random.default_rng(0)
    speakers = [sample_speaker(rng, "s", 0, 1.0, female_prob=0.0) for _ in range(400)]
    f0 = np.log2([s.f0_hz for s in speakers]) * 12
    level = np.array([s.level_dbfs for s in speakers])
    shifts = EMOTION_SHIFTS.values()
    pitch_shift = max(abs(s.pitch_st) for s in shifts)
    level_shift = max(abs(s.level_db) for s in shifts)
    # the middle 90% of male speakers span at least the largest emotion shift
    assert np.percentile(f0, 95) - np.percentile(f0, 5) >= pitch_shift
    assert np.percentile(level, 95) - np.percentile(level, 5) >= level_shift


def test_pitch_parameter_is_monotonic_and_clamped() -> None:
    values = [pitch_parameter("m3", hz) for hz in (50, 80, 100, 130, 170, 400)]
    assert values == sorted(values) and values[0] == 0 and values[-1] == 99


@pytest.mark.parametrize(
    "kwargs",
    [
        {"conversations": 0},
        {"seed": -1},
        {"min_utterances": 5, "max_utterances": 4},
        {"expressive_prob": 1.5},
        {"mood_stay": float("nan")},
        {"min_gap_s": 1.0, "max_gap_s": 0.5},
        {"min_duration_s": 3.0, "max_duration_s": 3.2},
        {"noise_dbfs": 0.0},
        {"long_turn_prob": 1.2},
        {"long_turn_min_s": 4.0},
        {"long_turn_min_s": 20.0, "long_turn_max_s": 20.2},
    ],
)
def test_bad_config_names_the_value(kwargs: dict) -> None:
    values = {"conversations": 1, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=r"got "):
        SynthConfig(**values)


def test_cli_rejects_bad_arguments_before_writing(tmp_path: Path, capsys) -> None:
    args = ["synth", "--out", str(tmp_path), "--conversations", "1", "--seed", "3"]
    assert cli_main(args + ["--expressive-prob", "2"]) == 2
    assert "expressive_prob must be in [0, 1], got 2.0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_acoustic_features_see_the_rendered_emotions() -> None:
    from pipelines.bench import FEATURES, prosody_features

    rng = np.random.default_rng(2)
    speaker = sample_speaker(rng, "s", 0, spread=1.0, female_prob=0.0)
    text = "The elevator was scheduled for review next month."
    measured = {}
    for emotion in ("angry", "neutral", "sad"):
        audio = synthesize(
            text, speaker.voice, render_prosody(speaker, emotion, 1.0, rng, 0.0), 16_000
        )
        measured[emotion] = dict(zip(FEATURES, prosody_features(audio), strict=True))
    for feature in ("level_db", "tilt_db", "centroid_hz"):
        assert measured["angry"][feature] > measured["neutral"][feature] > measured["sad"][feature]
    assert measured["sad"]["pause_fraction"] > measured["neutral"]["pause_fraction"]


def test_long_turns_are_drawn_with_their_probability_and_length(tmp_path: Path) -> None:
    config = SynthConfig(
        conversations=1, seed=2, min_utterances=12, max_utterances=12, long_turn_prob=0.5
    )
    table = generate_corpus(str(tmp_path / "long"), config)
    durations = np.asarray(table["end_s"]) - np.asarray(table["start_s"])
    long = durations[durations > config.max_duration_s]
    assert 2 <= long.size <= 10
    assert np.all((long >= config.long_turn_min_s) & (long <= config.long_turn_max_s))
    plain = generate_corpus(str(tmp_path / "plain"), replace(config, long_turn_prob=0.0))
    assert max(np.asarray(plain["end_s"]) - np.asarray(plain["start_s"])) <= 5.0
