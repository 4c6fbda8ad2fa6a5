"""One tokenize stage for every caller; VAD-split turns keep their own identity (no times)."""

from __future__ import annotations

import subprocess

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from dpm_worker.audio import conversation_segments
from dpm_worker.corpus import MANIFEST_SCHEMA, UtteranceRow, write_manifest
from dpm_worker.errors import ConfigError, ModelError, SegmentError
from dpm_worker.model import EmotionModel
from dpm_worker.speech import FRAME_TOKENS, tokenize_utterances
from dpm_worker.training import tokenize_corpus
from dpm_worker.utterance import Utterance

ESPEAK_SR = 22050
# Three turns of a stereo recording, one speaker per channel: (start seconds, channel).
TURNS = [(0.5, 0), (3.5, 1), (6.5, 0)]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> str:
    """A 10 s stereo FLAC of espeak-ng speech with the turns of ``TURNS``; its path."""
    tmp = tmp_path_factory.mktemp("vad_conv")
    voices = []
    for voice, text in (("en", "Good morning, I would like to talk about the report."),
                        ("en+f3", "Of course, I read it yesterday evening.")):  # fmt: skip
        subprocess.run(
            ["espeak-ng", "-v", voice, "-w", str(tmp / f"{voice}.wav"), text], check=True
        )
        samples, sr = sf.read(tmp / f"{voice}.wav", dtype="float32")
        assert sr == ESPEAK_SR
        voices.append(samples)
    audio = np.zeros((round(10.0 * ESPEAK_SR), 2), np.float32)
    for i, (start, channel) in enumerate(TURNS):
        first = round(start * ESPEAK_SR)
        audio[first : first + len(voices[i % 2]), channel] = voices[i % 2]
    path = tmp / "conv.flac"
    sf.write(path, audio, ESPEAK_SR)
    return str(path)


@pytest.fixture(scope="module")
def model() -> EmotionModel:
    return EmotionModel.random(seed=0)


# The recording's one manifest row has no times, an index, a speaker and a file-level emotion
# that none of its turns may inherit.
def _row(uri: str) -> UtteranceRow:
    return UtteranceRow("conv", 7, "whole-call", uri, emotion="happy")


def _check_turns(utterances: list[Utterance]) -> None:
    assert [u.utterance_index for u in utterances] == [0, 1, 2]
    assert [u.speaker for u in utterances] == ["ch0", "ch1", "ch0"]
    assert [u.emotion for u in utterances] == [None, None, None]
    assert [u.conversation_id for u in utterances] == ["conv"] * 3


def test_vad_turns_keep_their_own_index_speaker_and_times(recording, model) -> None:
    segments = conversation_segments([_row(recording)])
    checked: list[tuple[int, str]] = []
    out = list(
        tokenize_utterances(
            segments, model.speech_tokenizer, lambda n, uri: checked.append((n, uri))
        )
    )
    _check_turns(out)
    for utt, seg, (start, _channel) in zip(out, segments, TURNS, strict=True):
        assert utt.start_s is not None and abs(utt.start_s - start) < 0.3
        assert (utt.start_s, utt.end_s, utt.channel) == (seg.start_s, seg.end_s, seg.channel)
        assert utt.samples is None and seg.samples is not None
        np.testing.assert_array_equal(utt.codes(), model.speech_tokenizer.encode(seg.samples))
    assert checked == [(len(u.codes()) + FRAME_TOKENS, recording) for u in out]


class CountingTokenizer:
    """The model's tokenizer, recording how many waves each ``encode_batch`` call gets."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []
        self.rate_hz, self.vocab_size = inner.rate_hz, inner.vocab_size

    def encode(self, wave):
        return self.inner.encode(wave)

    def encode_batch(self, waves):
        self.calls.append(len(waves))
        return self.inner.encode_batch(waves)


def test_batches_hold_batch_seconds_of_audio_and_keep_the_codes(recording, model) -> None:
    segments = conversation_segments([_row(recording)]) * 3  # 9 turns of ~2.5 s
    one_by_one = [model.speech_tokenizer.encode(s.samples) for s in segments]
    for seconds, calls in ((1.0, [1] * 9), (6.0, [3, 3, 3]), (600.0, [9])):
        counting = CountingTokenizer(model.speech_tokenizer)
        out = list(tokenize_utterances(segments, counting, batch_seconds=seconds))
        assert counting.calls == calls, seconds
        assert [u.utterance_index for u in out] == [s.utterance_index for s in segments]
        for utt, codes in zip(out, one_by_one, strict=True):
            np.testing.assert_array_equal(utt.codes(), codes)
    with pytest.raises(ConfigError, match="batch_seconds"):
        list(tokenize_utterances(segments, model.speech_tokenizer, batch_seconds=0))


def test_fit_check_and_untokenized_input_raise(recording, model) -> None:
    segments = conversation_segments([_row(recording)])
    small = EmotionModel.random(seed=0, max_context=16)  # a turn is ~2.5 s
    with pytest.raises(ModelError, match="exceeds"):
        list(tokenize_utterances(segments, small.speech_tokenizer, small.check_fits))
    with pytest.raises(SegmentError, match="no samples"):
        list(tokenize_utterances([Utterance("conv", 0, "a")], model.speech_tokenizer))


def test_token_cache_keys_vad_turns_on_the_turn_not_the_row(recording, model, tmp_path) -> None:
    row = _row(recording)
    table = pa.Table.from_pylist(
        [{"conversation_id": row.conversation_id, "utterance_index": row.utterance_index,
          "speaker": row.speaker, "audio_uri": row.audio_uri, "emotion": row.emotion}],
        schema=MANIFEST_SCHEMA,
    )  # fmt: skip
    manifest = write_manifest(table, str(tmp_path / "manifest.parquet"))
    dataset = tokenize_corpus(
        manifest, model.speech_tokenizer, "fp", cache_root=tmp_path / "cache", progress=False
    )
    rows = dataset.to_list()
    assert [r["utterance_index"] for r in rows] == [0, 1, 2]
    assert [r["speaker"] for r in rows] == ["ch0", "ch1", "ch0"]
    assert [r["emotion"] for r in rows] == [None, None, None]
    expected = list(
        tokenize_utterances(conversation_segments([row]), model.speech_tokenizer)
    )  # the cache holds what labeling would feed the model
    assert [r["codes"] for r in rows] == [u.codes().tolist() for u in expected]
