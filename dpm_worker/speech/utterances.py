"""The one stage that turns a conversation's utterances (with audio) into model inputs.

The labeling worker, ``dpm eval``, the benchmarks and the training token cache all tokenize
through :func:`tokenize_utterances`, so they feed the model the same codes and every
utterance keeps the identity the audio stage gave it (a VAD turn its own index, speaker and
times, never its recording row's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from dpm_worker.audio import SAMPLE_RATE
from dpm_worker.errors import ConfigError, SegmentError
from dpm_worker.speech.features import BlockFeatures
from dpm_worker.speech.speaker_levels import SpeakerLevels
from dpm_worker.speech.tokenizer import SpeechTokenizer
from dpm_worker.telemetry import StageClock
from dpm_worker.utterance import Utterance

# The tokens around an utterance's audio codes in the stream: <spk> before, <audio_end> after.
FRAME_TOKENS = 2
# Audio per encode_batch call: 60 s of 16 kHz float32 is 3.8 MB of samples, enough to fill a
# GPU tokenizer's batch and small beside a worker's memory.
BATCH_SECONDS = 60.0


def tokenize_utterances(
    utterances: Iterable[Utterance],
    tokenizer: SpeechTokenizer,
    check_fits: Callable[[int, str], None] | None = None,
    *,
    batch_seconds: float = BATCH_SECONDS,
    timings: dict[str, float] | None = None,
) -> Iterator[Utterance]:
    """The utterances with their speech codes, in the order given, tokenized in batches.

    Each yielded utterance is the input's with ``audio_ids`` (int64 codes) set (and its
    ``acoustic`` summary when the tokenizer's ``summaries`` is on: a model with an acoustic
    head turns it on) and its samples dropped (the codes replace them; a long conversation's
    audio is not kept twice).
    Utterances are gathered until their audio reaches ``batch_seconds`` and encoded with one
    ``tokenizer.encode_batch`` call (the codes ``encode`` gives one by one), so at most one
    batch of samples is held beyond what the caller holds.

    A speaker-relative tokenizer (``speaker_relative``) gets each speaker's reference levels,
    keyed by conversation and speaker: with ``speaker_reference: running`` from the utterances
    before it in this stream; with ``conversation`` from all the speaker's utterances in the
    conversation, so a conversation's utterances (consecutive in the stream) are featurized
    batch by batch, and their block features held until the last one has come and the levels
    are counted; then they are coded (each utterance's audio is featurized once).

    Args:
        utterances: utterances with samples, e.g. one conversation's as
            ``dpm_worker.audio.conversation_segments`` returns them, or a whole corpus's.
        tokenizer: the model's speech tokenizer.
        check_fits: called with the utterance's token count (codes + ``<spk>`` +
            ``<audio_end>``) and its audio URI before it is yielded; the model's
            ``check_fits`` raises for an utterance it cannot hold.
        batch_seconds: audio per ``encode_batch`` call (bounds the batch's memory).
        timings: when given, gets ``encode_s`` (the front end: the encoder or the block
            features, and the summaries' raw statistics) and ``units_s`` (codes from those:
            quantizing, speaker references, summaries) added, summed over the batches; a
            tokenizer that codes in one call (``encode_batch``) counts it all as ``encode_s``.

    Raises:
        SegmentError: an utterance has no samples.
        ConfigError: ``batch_seconds`` is not positive.
    """
    if not batch_seconds > 0:
        raise ConfigError(f"batch_seconds must be > 0, got {batch_seconds}")
    limit = batch_seconds * SAMPLE_RATE
    clock = StageClock(timings)
    if not getattr(tokenizer, "speaker_relative", False):
        for batch in _batches(utterances, limit):
            yield from _encode(batch, tokenizer, check_fits, None, clock)
    elif getattr(tokenizer, "speaker_reference", "running") == "conversation":
        for conversation in _conversations(utterances):
            levels = tokenizer.new_conversation_levels()  # type: ignore[attr-defined]
            featurized = []
            for batch in _batches(conversation, limit):
                with clock("encode_s"):
                    feats, counts = tokenizer.block_features(  # type: ignore[attr-defined]
                        [u.samples for u in batch]
                    )
                with clock("units_s"):
                    levels.add_stacked(_speakers(batch), feats, counts)
                featurized.append((batch, feats, counts))
            for batch, feats, counts in featurized:
                yield from _coded(batch, tokenizer, feats, counts, levels, check_fits, clock)
    else:
        # running references, across batches and conversations
        running = SpeakerLevels(spectral=_spectral_relative(tokenizer))
        for batch in _batches(utterances, limit):
            yield from _encode(batch, tokenizer, check_fits, running, clock)


def _spectral_relative(tokenizer: SpeechTokenizer) -> bool:
    return bool(getattr(getattr(tokenizer, "config", None), "spectral_relative", False))


def _batches(utterances: Iterable[Utterance], limit: float) -> Iterator[list[Utterance]]:
    """The utterances in batches of about ``limit`` samples; each has samples."""
    batch: list[Utterance] = []
    samples = 0
    for utt in utterances:
        if utt.samples is None:
            raise SegmentError(
                f"utterance {utt.utterance_index} of {utt.conversation_id!r} has no samples",
                utt.audio_uri or None,
            )
        batch.append(utt)
        samples += len(utt.samples)
        if samples >= limit:
            yield batch
            batch, samples = [], 0
    if batch:
        yield batch


def _conversations(utterances: Iterable[Utterance]) -> Iterator[list[Utterance]]:
    """Each conversation's utterances, which must come together (a manifest's do).

    Raises:
        SegmentError: a conversation comes back after another one.
    """
    run: list[Utterance] = []
    done: set[str] = set()
    for utt in utterances:
        if run and utt.conversation_id != run[0].conversation_id:
            done.add(run[0].conversation_id)
            yield run
            run = []
        if utt.conversation_id in done:
            raise SegmentError(
                f"the utterances of conversation {utt.conversation_id!r} are not together: the "
                "conversation reference (speaker_reference: conversation) needs each "
                "conversation's utterances in one run",
                utt.audio_uri or None,
            )
        run.append(utt)
    if run:
        yield run


def _speakers(batch: list[Utterance]) -> list[tuple[str, str]]:
    return [(utt.conversation_id, utt.speaker) for utt in batch]


def _encode(
    batch: list[Utterance],
    tokenizer: SpeechTokenizer,
    check_fits: Callable[[int, str], None] | None,
    levels: SpeakerLevels | None,
    clock: StageClock,
) -> Iterator[Utterance]:
    waves = [utt.samples for utt in batch if utt.samples is not None]
    if getattr(tokenizer, "summaries", False):
        with clock("encode_s"):
            feats, counts = tokenizer.block_features(waves)  # type: ignore[attr-defined]
        yield from _coded(batch, tokenizer, feats, counts, levels, check_fits, clock)
        return
    with clock("encode_s"):
        if levels is None:
            codes_of = tokenizer.encode_batch(waves)
        else:
            codes_of = tokenizer.encode_batch(waves, levels=levels, speakers=_speakers(batch))  # type: ignore[call-arg]
    yield from _with_codes(batch, codes_of, check_fits)


def _coded(
    batch: list[Utterance],
    tokenizer: SpeechTokenizer,
    feats: BlockFeatures,
    counts: list[int],
    levels: SpeakerLevels | None,
    check_fits: Callable[[int, str], None] | None,
    clock: StageClock,
) -> Iterator[Utterance]:
    """The batch's featurized utterances coded (and summarized when the tokenizer's
    ``summaries`` is on) against ``levels`` (None: each wave its own reference)."""
    speakers = None if levels is None else _speakers(batch)
    if getattr(tokenizer, "summaries", False):
        with clock("units_s"):
            codes_of, summaries = tokenizer.quantize_with_summaries(  # type: ignore[attr-defined]
                feats, counts, levels=levels, speakers=speakers
            )
        yield from _with_codes(batch, codes_of, check_fits, summaries)
        return
    with clock("units_s"):
        codes_of = tokenizer.quantize(feats, counts, levels=levels, speakers=speakers)  # type: ignore[attr-defined]
    yield from _with_codes(batch, codes_of, check_fits)


def _with_codes(
    batch: list[Utterance],
    codes_of: list[np.ndarray],
    check_fits: Callable[[int, str], None] | None,
    summaries: list[np.ndarray] | None = None,
) -> Iterator[Utterance]:
    """The batch's utterances with their codes (and acoustic summaries, when given) instead
    of their samples (fit-checked)."""
    for n, (utt, codes) in enumerate(zip(batch, codes_of, strict=True)):
        codes = np.asarray(codes, dtype=np.int64)
        if check_fits is not None:
            check_fits(len(codes) + FRAME_TOKENS, utt.audio_uri)
        acoustic = None if summaries is None else summaries[n]
        yield dataclasses.replace(utt, samples=None, audio_ids=codes, acoustic=acoustic)
