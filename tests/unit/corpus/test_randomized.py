"""The domain-randomized generator: reproducible bytes, the split columns, engines that speak,
cues drawn per conversation in the usual directions, prosody after synthesis, and channels."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dpm_worker.corpus import (
    CUE_MIXES,
    CUES,
    RANDOMIZED_SCHEMA,
    VOICES,
    ChannelConfig,
    Line,
    RandomizeConfig,
    SynthConfig,
    SynthRequest,
    apply_line,
    draw_cue_profile,
    generate_corpus,
    read_manifest,
    select_voices,
    synthesize_requests,
)
from dpm_worker.corpus.cues import insert_pauses, sox_pitch_tempo
from dpm_worker.errors import ConfigError
from pipelines.bench.separability import prosody_features
from pipelines.cli import main as cli_main

SR = 16_000
HELD_OUT = ["--voice-families", "espeak:f4,flite:slt,festival:*", "--cue-mixes", "no-pitch,all"]


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("randomized")
    args = ["synth", "--out", str(out), "--conversations", "3", "--seed", "5"]
    args += ["--min-utterances", "5", "--max-utterances", "6", "--randomize", *HELD_OUT]
    assert cli_main([*args, "--workers", "2", "--telephone-prob", "0.5"]) == 0
    return out


def test_same_seed_same_bytes_and_the_split_columns(corpus: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    args = ["synth", "--out", str(again), "--conversations", "3", "--seed", "5"]
    args += ["--min-utterances", "5", "--max-utterances", "6", "--randomize", *HELD_OUT]
    assert cli_main([*args, "--workers", "1", "--telephone-prob", "0.5"]) == 0
    assert digests(again) == digests(corpus)
    table = pq.read_table(corpus / "manifest.parquet")
    assert table.schema.names == RANDOMIZED_SCHEMA.names
    assert read_manifest(str(corpus)).num_rows == table.num_rows  # a valid manifest
    rows = table.to_pylist()
    assert {r["voice_family"] for r in rows} <= {"espeak:f4", "flite:slt", "festival:kal",
                                                 "festival:ked", "festival:slt"}  # fmt: skip
    assert {r["cue_mix"] for r in rows} <= {"no-pitch", "all"}
    assert all(r["engine"] == r["voice_family"].split(":")[0] for r in rows)
    for row in rows:  # a conversation has one cue mix; a speaker one voice
        same = [r for r in rows if r["conversation_id"] == row["conversation_id"]]
        assert {r["cue_mix"] for r in same} == {row["cue_mix"]}
        assert len({r["voice"] for r in same if r["speaker"] == row["speaker"]}) == 1
        assert 1.5 <= row["end_s"] - row["start_s"] <= 5.0 + 1e-6


def test_loudness_is_not_normalised_to_the_planned_level(corpus: Path) -> None:
    import soundfile as sf

    rows = pq.read_table(corpus / "manifest.parquet").to_pylist()
    audio = {}
    misses = []
    for row in rows:
        if "tel" in row["voice"]:
            continue
        if row["audio_uri"] not in audio:
            audio[row["audio_uri"]] = sf.read(corpus / row["audio_uri"], dtype="float32")[0]
    for row in rows:
        x = audio[row["audio_uri"]][round(row["start_s"] * SR) : round(row["end_s"] * SR)]
        level = prosody_features(x[:, row["channel"]])[2]
        misses.append(level)
    # the speech level varies by sentence, engine and channel: no two utterances share it
    assert np.std(misses) > 1.0
    assert len({round(m, 2) for m in misses}) > len(misses) // 2


def test_other_flags_need_randomize(tmp_path: Path) -> None:
    args = ["synth", "--out", str(tmp_path), "--conversations", "1", "--seed", "0"]
    assert cli_main([*args, "--engines", "flite"]) == 2
    assert cli_main([*args, "--randomize", "--engines", "speakomatic"]) == 2
    assert cli_main([*args, "--randomize", "--cue-mixes", "loud-only"]) == 2
    assert cli_main([*args, "--randomize", "--codecs", "mp3"]) == 2


def test_select_voices_by_engine_and_family_pattern() -> None:
    assert {v.family for v in select_voices(("espeak",), ("espeak:f*",))} == {
        f"espeak:f{i}" for i in range(1, 6)
    }
    assert {v.engine for v in select_voices(("flite", "festival"), ())} == {"flite", "festival"}
    with pytest.raises(ConfigError, match="festival:nobody"):
        select_voices(("festival",), ("festival:nobody",))
    with pytest.raises(ConfigError, match="espeak:f1"):
        RandomizeConfig(engines=("flite",), voice_families=("espeak:f1",))


@pytest.mark.parametrize("family", ["flite:kal", "flite:slt", "festival:ked", "festival:slt"])
def test_every_engine_speaks_and_native_controls_move_pitch_and_rate(family: str) -> None:
    voice = next(v for v in VOICES if v.family == family)
    text = "The report was moved to the second shelf on Tuesday."
    plain, slow = synthesize_requests(
        [
            SynthRequest(voice, text),
            SynthRequest(voice, text, f0_hz=voice.f0_hz * 1.4, rate_factor=0.7),
        ],
        SR,
    )
    assert plain.size > SR
    if voice.native_rate:
        assert slow.size > 1.25 * plain.size
    if voice.native_pitch:
        shift = prosody_features(slow)[0] - prosody_features(plain)[0]
        assert 3.0 < shift < 8.0  # 1.4x is 5.8 semitones


def test_sox_applies_pitch_and_tempo_after_synthesis() -> None:
    voice = next(v for v in VOICES if v.family == "festival:slt")  # no native pitch control
    (audio,) = synthesize_requests([SynthRequest(voice, "The bakery closed early on Sunday.")], SR)
    shifted = sox_pitch_tempo(audio, SR, cents=-400.0, tempo=1.25)
    assert shifted.size == pytest.approx(audio.size / 1.25, rel=0.05)
    assert prosody_features(shifted)[0] - prosody_features(audio)[0] == pytest.approx(-4.0, abs=1.0)
    longer = insert_pauses(audio, SR, 120.0)
    assert longer.size > audio.size + int(0.12 * SR)


def test_cue_profiles_drop_cues_and_shift_in_the_usual_directions() -> None:
    rng = np.random.default_rng(0)
    labels = ("neutral", "happy", "sad", "angry")
    seen = set()
    for _ in range(200):
        profile = draw_cue_profile(rng, tuple(CUE_MIXES), 0.6, labels)
        seen.add(profile.cues)
        assert set(profile.cues) <= set(CUES) and len(profile.cues) >= 2
        if profile.mix != "random":
            assert profile.cues == CUE_MIXES[profile.mix]
        for cue in CUES:
            assert profile.shift("neutral", cue, 1.0) == profile.shift("happy", cue, 0.0)
        if "pitch" in profile.cues:
            assert profile.shift("happy", "pitch", 1.0) > 0 > profile.shift("sad", "pitch", 1.0)
        else:
            assert profile.shift("happy", "pitch", 1.0) == 0.0
        if "loudness" in profile.cues:
            assert profile.shift("angry", "loudness", 1.0) > 0 > profile.shift("sad", "loudness", 1)
        if "rate" in profile.cues:
            assert profile.shift("sad", "rate", 1.0) < 1.0 < profile.shift("angry", "rate", 1.0)
    assert len(seen) > 10  # the random mix draws many subsets


def test_a_telephone_line_cuts_the_band_and_noise_follows_its_snr() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(2 * SR) / SR
    tone = (0.1 * np.sin(2 * np.pi * 1000 * t) + 0.1 * np.sin(2 * np.pi * 6000 * t)).astype(
        np.float32
    )
    for codec in ("pcm", "gsm", "ul", "al", "vox", "amr-nb"):
        out = apply_line(tone, Line(True, codec, None, 0.0, None), SR, rng)
        assert out.size == tone.size
        spectrum = np.abs(np.fft.rfft(out[SR // 2 : -SR // 2]))
        freqs = np.fft.rfftfreq(SR, 1 / SR)
        low = spectrum[(freqs > 900) & (freqs < 1100)].max()
        high = spectrum[(freqs > 5900) & (freqs < 6100)].max()
        assert high < 0.01 * low, codec
    noisy = apply_line(tone, Line(False, "pcm", "pink", 10.0, None), SR, rng)
    snr = 10 * np.log10(np.mean(tone**2) / np.mean((noisy - tone) ** 2))
    assert snr == pytest.approx(10.0, abs=0.5)
    wet = apply_line(tone, Line(False, "pcm", None, 0.0, 0.5), SR, rng)
    assert wet.size == tone.size and not np.allclose(wet, tone)
    with pytest.raises(ConfigError, match="mp3"):
        ChannelConfig(codecs=("mp3",))


def test_the_espeak_generator_is_unchanged_without_randomize(tmp_path: Path) -> None:
    config = SynthConfig(conversations=1, seed=3, min_utterances=3, max_utterances=3)
    table = generate_corpus(str(tmp_path), config)
    assert "engine" not in table.column_names
    assert b"randomize" not in table.schema.metadata[b"dpm.synth_config"]
