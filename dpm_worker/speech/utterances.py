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

from dpm_worker.errors import SegmentError
from dpm_worker.speech.speaker_levels import SpeakerLevels
from dpm_worker.speech.tokenizer import SpeechTokenizer
from dpm_worker.utterance import Utterance

# The tokens around an utterance's audio codes in the stream: <spk> before, <audio_end> after.
FRAME_TOKENS = 2


def tokenize_utterances(
    utterances: Iterable[Utterance],
    tokenizer: SpeechTokenizer,
    check_fits: Callable[[int, str], None] | None = None,
) -> Iterator[Utterance]:
    """The utterances with their speech codes, in the order given, one at a time.

    Each yielded utterance is the input's with ``audio_ids`` (int64 codes) set and its
    samples dropped (the codes replace them; a long conversation's audio is not kept twice).

    Args:
        utterances: one conversation's utterances, as ``dpm_worker.audio.conversation_segments``
            returns them.
        tokenizer: the model's speech tokenizer.
        check_fits: called with the utterance's token count (codes + ``<spk>`` +
            ``<audio_end>``) and its audio URI before it is yielded; the model's
            ``check_fits`` raises for an utterance it cannot hold.

    A speaker-relative tokenizer (``speaker_relative``) gets each speaker's running reference
    levels, keyed by conversation and speaker, from the utterances before it in this stream.

    Raises:
        SegmentError: an utterance has no samples.
    """
    levels = SpeakerLevels() if getattr(tokenizer, "speaker_relative", False) else None
    for utt in utterances:
        if utt.samples is None:
            raise SegmentError(
                f"utterance {utt.utterance_index} of {utt.conversation_id!r} has no samples",
                utt.audio_uri or None,
            )
        if levels is not None:
            feats = tokenizer.features(utt.samples)  # type: ignore[attr-defined]
            reference = levels.update((utt.conversation_id, utt.speaker), feats)
            codes = np.asarray(tokenizer.quantize(feats, reference), dtype=np.int64)  # type: ignore[attr-defined]
        else:
            codes = np.asarray(tokenizer.encode(utt.samples), dtype=np.int64)
        if check_fits is not None:
            check_fits(len(codes) + FRAME_TOKENS, utt.audio_uri)
        yield dataclasses.replace(utt, samples=None, audio_ids=codes)
