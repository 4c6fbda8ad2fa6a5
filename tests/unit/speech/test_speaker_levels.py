"""Speaker-relative codes: a speaker's gain and habitual pitch leave the codes; shifts stay."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dpm_worker.audio import SAMPLE_RATE
from dpm_worker.errors import ConfigError, SegmentError
from dpm_worker.model import default_model_path
from dpm_worker.speech import (
    BuiltinSpeechTokenizer,
    SpeechTokenizerConfig,
    compute_block_features,
    fit_speech_tokenizer,
    load_speech_tokenizer,
    tokenize_utterances,
)
from dpm_worker.speech.speaker_levels import SpeakerLevels, relative_features
from dpm_worker.utterance import Utterance

# The shipped absolute codebook's fingerprint (the token cache key) from before the option.
V3_TOKENIZER_FINGERPRINT = "5f8e8ac9d57934a3aa5eca5d064d99f90996194f3970fbdfa4633e18b4683614"


def tone(f0: float, amplitude: float, seconds: float = 1.2) -> np.ndarray:
    """A harmonic tone (voiced to the pitch tracker) with a little vibrato."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * f0 * (t + 0.002 * np.sin(2 * np.pi * 3 * t))
    wave = sum(np.sin(k * phase) / k for k in range(1, 6))
    return (amplitude * wave / np.abs(wave).max()).astype(np.float32)


def utt(conversation: str, index: int, speaker: str, samples: np.ndarray) -> Utterance:
    return Utterance(
        conversation_id=conversation,
        utterance_index=index,
        speaker=speaker,
        audio_uri="mem",
        samples=samples,
    )


@pytest.fixture(scope="module")
def relative() -> BuiltinSpeechTokenizer:
    """A speaker-relative codebook fitted on two speakers of different pitch and gain."""
    waves, keys = [], []
    for f0, amp, spk in [
        (110, 0.1, "a"),
        (220, 0.5, "b"),
        (130, 0.1, "a"),
        (180, 0.5, "b"),
        (95, 0.1, "a"),
    ]:
        waves.append(tone(f0, amp))
        keys.append(("c", spk))
    config = SpeechTokenizerConfig(n_spectral=2, n_energy=4, n_pitch=5, speaker_relative=True)
    return fit_speech_tokenizer(waves, config, seed=0, speakers=keys)


def test_absolute_codebook_fingerprint_is_unchanged() -> None:
    """dpm-default-v3's absolute codebook (a fixture) keeps its fingerprint, so token caches
    and checkpoints made with it stay valid; the shipped v4 codebook is speaker-relative."""
    tokenizer = load_speech_tokenizer(Path(__file__).parents[2] / "fixtures" / "tokenizer_v3")
    assert not tokenizer.speaker_relative
    assert tokenizer.fingerprint == V3_TOKENIZER_FINGERPRINT
    assert load_speech_tokenizer(default_model_path()).speaker_relative


def test_relative_codebook_round_trips_and_changes_fingerprint(relative, tmp_path) -> None:
    relative.save(tmp_path)
    loaded = load_speech_tokenizer(tmp_path)
    assert loaded.speaker_relative
    assert loaded.fingerprint == relative.fingerprint
    absolute = BuiltinSpeechTokenizer(
        SpeechTokenizerConfig(n_spectral=2, n_energy=4, n_pitch=5),
        relative.spectral_centroids,
        relative.energy_centroids,
        relative.pitch_centroids,
    )
    assert absolute.fingerprint != relative.fingerprint


def test_gain_and_voice_pitch_leave_the_codes(relative) -> None:
    """Speaker b is speaker a 14 dB louder: the same codes; an octave up: the same pitch."""
    calm = tone(120, 0.1)
    stream = [utt("c", 0, "a", calm), utt("c", 1, "b", calm * 5.0)]
    codes = [u.codes() for u in tokenize_utterances(stream, relative)]
    np.testing.assert_array_equal(codes[0], codes[1])
    # The absolute codebook of the same levels tells them apart.
    absolute = BuiltinSpeechTokenizer.random(
        SpeechTokenizerConfig(n_spectral=2, n_energy=4, n_pitch=5)
    )
    assert not np.array_equal(absolute.encode(calm), absolute.encode(calm * 5.0))
    # Pitch: a voice an octave higher sits at the same place against its own reference.
    levels = SpeakerLevels()
    low, high = (
        compute_block_features(torch.from_numpy(tone(120, 0.1))),
        compute_block_features(torch.from_numpy(tone(240, 0.1))),
    )
    shifts = [
        relative_features(f, levels.update(k, f)).log_f0 for k, f in (("a", low), ("b", high))
    ]
    assert abs(np.nanmedian(shifts[0].numpy())) < 0.05
    assert abs(np.nanmedian(shifts[1].numpy())) < 0.05


def test_a_raised_voice_shows_against_the_speakers_reference(relative) -> None:
    """After two calm turns, a higher and louder turn of the same speaker gets higher codes."""
    n_pitch, n_energy = 5, 4
    stream = [
        utt("c", 0, "a", tone(120, 0.1)),
        utt("c", 1, "a", tone(120, 0.1)),
        utt("c", 2, "a", tone(170, 0.4)),
    ]
    codes = [u.codes() for u in tokenize_utterances(stream, relative)]
    pitch = [c % n_pitch for c in codes]
    energy = [(c // n_pitch) % n_energy for c in codes]
    assert np.median(pitch[2]) > np.median(pitch[1])
    assert np.median(energy[2]) > np.median(energy[1])
    # Alone (its own reference), the raised turn's pitch sits where a first turn's does.
    alone = relative.encode(stream[2].samples) % n_pitch
    assert np.median(alone) == np.median(pitch[0])


def test_references_are_per_conversation_and_speaker(relative) -> None:
    """The same speaker name in another conversation starts a new reference."""
    raised = tone(170, 0.4)
    stream = [utt("c1", 0, "a", tone(120, 0.1)), utt("c2", 0, "a", raised)]
    codes = [u.codes() for u in tokenize_utterances(stream, relative)]
    np.testing.assert_array_equal(codes[1], relative.encode(raised))
    assert not np.array_equal(
        codes[1],
        list(tokenize_utterances([stream[0], utt("c1", 1, "a", raised)], relative))[1].codes(),
    )


def test_relative_codes_need_one_speaker_key_per_wave(relative) -> None:
    waves = [tone(120, 0.1), tone(130, 0.1)]
    with pytest.raises(ConfigError, match="speaker keys"):
        relative.encode_batch(waves, levels=SpeakerLevels(), speakers=[("c", "a")])
    with pytest.raises(ConfigError, match="speaker key"):
        fit_speech_tokenizer(waves, SpeechTokenizerConfig(speaker_relative=True), seed=0)


def test_batched_relative_codes_equal_one_by_one(relative) -> None:
    """Batches of any size give each utterance the codes it gets in a stream of one-by-one."""
    stream = [utt("c", i, "ab"[i % 2], tone(100 + 15 * i, 0.05 + 0.05 * i)) for i in range(6)]
    one = [u.codes() for u in tokenize_utterances(stream, relative, batch_seconds=0.1)]
    many = [u.codes() for u in tokenize_utterances(stream, relative, batch_seconds=600.0)]
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)


def with_reference(tokenizer: BuiltinSpeechTokenizer, reference: str) -> BuiltinSpeechTokenizer:
    """The same codebook with another ``speaker_reference``."""
    return BuiltinSpeechTokenizer(
        dataclasses.replace(tokenizer.config, speaker_reference=reference),
        tokenizer.spectral_centroids,
        tokenizer.energy_centroids,
        tokenizer.pitch_centroids,
    )


def test_conversation_reference_is_the_speakers_mean_over_the_whole_conversation(
    relative,
) -> None:
    """With ``speaker_reference: conversation`` every utterance of a speaker is coded against
    the mean of all the speaker's utterances in the conversation: a raised first turn shows
    as raised (a running reference makes a first turn its own reference), a speaker's turns
    are coded the same wherever they fall, and conversations stay apart."""
    whole = with_reference(relative, "conversation")
    n_pitch = whole.config.n_pitch
    raised, calm = tone(170, 0.4), tone(120, 0.1)
    stream = [
        utt("c", 0, "a", raised),
        utt("c", 1, "b", tone(200, 0.3)),
        utt("c", 2, "a", calm),
        utt("c", 3, "a", calm),
        utt("d", 0, "a", raised),
    ]
    codes = [u.codes() for u in tokenize_utterances(stream, whole)]
    running = [u.codes() for u in tokenize_utterances(stream, relative)]
    # the running reference: the raised first turn is its own reference, so it reads as calm
    assert np.median(running[0] % n_pitch) == np.median(running[4] % n_pitch)
    assert np.median(codes[0] % n_pitch) > np.median(codes[2] % n_pitch)
    np.testing.assert_array_equal(codes[2], codes[3])
    # conversation d has one utterance of a: its own reference, as the running one
    np.testing.assert_array_equal(codes[4], running[4])
    # the other speaker's turns do not move a's reference
    without_b = [u.codes() for u in tokenize_utterances(stream[:1] + stream[2:4], whole)]
    np.testing.assert_array_equal(without_b[0], codes[0])
    # batches of any size: the same codes
    small = [u.codes() for u in tokenize_utterances(stream, whole, batch_seconds=0.1)]
    for a, b in zip(small, codes, strict=True):
        np.testing.assert_array_equal(a, b)
    # a conversation that comes back after another cannot have its reference
    with pytest.raises(SegmentError, match="not together"):
        list(tokenize_utterances([*stream, utt("c", 4, "a", calm)], whole))


def test_conversation_reference_round_trips_and_has_its_own_fingerprint(relative, tmp_path) -> None:
    whole = with_reference(relative, "conversation")
    assert with_reference(relative, "running").fingerprint == relative.fingerprint
    assert whole.fingerprint != relative.fingerprint
    whole.save(tmp_path)
    loaded = load_speech_tokenizer(tmp_path)
    assert loaded.speaker_reference == "conversation"
    assert loaded.fingerprint == whole.fingerprint
    with pytest.raises(ConfigError, match="speaker_reference"):
        SpeechTokenizerConfig(speaker_relative=True, speaker_reference="future")


def test_codebook_fit_uses_the_conversation_reference() -> None:
    """Fitted with the conversation reference, the loudness levels are shifts from each
    speaker's conversation mean: for a speaker at two gains, about +-half the gap, where the
    running reference puts the first turn at 0."""
    waves = [tone(120, 0.05), tone(120, 0.4)] * 3
    keys = [("c", "a")] * 6
    shape = dict(n_spectral=1, n_energy=2, n_pitch=2, speaker_relative=True)
    whole = fit_speech_tokenizer(
        waves, SpeechTokenizerConfig(**shape, speaker_reference="conversation"), speakers=keys
    )
    running = fit_speech_tokenizer(waves, SpeechTokenizerConfig(**shape), speakers=keys)
    low, high = whole.energy_centroids.tolist()
    assert low < 0 < high and abs(low + high) < 0.2 * (high - low)
    assert running.energy_centroids.tolist() != pytest.approx([low, high], abs=1e-3)
