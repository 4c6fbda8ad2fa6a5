"""Turn one conversation's manifest rows into utterances with their audio (16 kHz mono float32).

Rules, applied to the rows of one conversation in dialogue order:

1. A row with ``start_s`` and/or ``end_s`` is one utterance cut from its recording (a missing
   start means the recording's start, a missing end its end). It keeps its utterance_index,
   speaker, channel and emotion. A recording shared by several such rows is decoded once;
   a recording used by one row is range-read.
2. A row with neither time is a whole file. When it is the conversation's only row (or
   ``vad=True``) the file holds the whole unsegmented conversation and is segmented by VAD;
   otherwise (several rows, e.g. MELD's one clip per utterance, or ``vad=False``) the whole
   file is one utterance, as in rule 1.
3. VAD turns: a mono recording gives turns of ``row.speaker`` (``"ch0"`` when it is empty),
   with ``channel=None``. A multi-channel recording is one speaker per channel (as in call
   recordings and the synthetic corpus): VAD runs on each channel separately and a turn on
   channel ``c`` gets ``speaker="ch{c}"`` and ``channel=c``. A row that names a ``channel``
   is segmented on that channel only, with the row's speaker. Turns of all VAD rows are ordered
   by start time (recordings of one conversation share a time origin) and numbered
   ``utterance_index`` 0..n-1; their emotion and expressive flag are None (a file-level
   label is not a turn's label).
   Rows with times and VAD rows cannot be mixed in one conversation.

A recording whose segments are all silent, or in which VAD finds no speech, raises AudioError.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from dpm_worker.audio.decode import (
    SAMPLE_RATE,
    SILENCE_PEAK,
    Recording,
    cut_segment,
    read_recording,
    read_segment,
)
from dpm_worker.audio.vad import detect_speech
from dpm_worker.errors import AudioError, SegmentError
from dpm_worker.utterance import Utterance

if TYPE_CHECKING:
    from dpm_worker.corpus import UtteranceRow


def conversation_segments(
    rows: Sequence[UtteranceRow], *, endpoint_url: str | None = None, vad: bool | None = None
) -> list[Utterance]:
    """Read the audio of one conversation's utterances (see the module docstring for rules).

    Args:
        rows: the conversation's manifest rows in dialogue order.
        endpoint_url: explicit S3 endpoint.
        vad: force VAD segmentation of rows without times (True), forbid it (False), or
            decide from the row count (None: only a single-row conversation is segmented).

    Raises:
        AudioError: a recording is unreadable, non-finite, all silent, or has no speech.
        SegmentError: bad times or channel, or timed and VAD rows mixed.
    """
    if not rows:
        return []
    conversations = {row.conversation_id for row in rows}
    if len(conversations) > 1:
        raise SegmentError(f"rows of several conversations given: {sorted(conversations)}")
    untimed = [row for row in rows if row.start_s is None and row.end_s is None]
    use_vad = vad if vad is not None else len(rows) == 1
    if not (use_vad and untimed):
        return _cut_rows(rows, endpoint_url)
    if len(untimed) != len(rows):
        raise SegmentError(
            f"conversation {rows[0].conversation_id!r} mixes rows with times and rows to "
            "segment by VAD",
            untimed[0].audio_uri,
        )
    return _vad_rows(rows, endpoint_url)


def _cut_rows(rows: Sequence[UtteranceRow], endpoint_url: str | None) -> list[Utterance]:
    uses = Counter(row.audio_uri for row in rows)
    recordings: dict[str, Recording] = {}
    segments = []
    for row in rows:
        if uses[row.audio_uri] > 1:
            if row.audio_uri not in recordings:
                recordings[row.audio_uri] = read_recording(row.audio_uri, endpoint_url=endpoint_url)
            recording = recordings[row.audio_uri]
            samples = cut_segment(recording, row.start_s, row.end_s, row.channel)
        else:
            samples = read_segment(
                row.audio_uri, row.start_s, row.end_s, row.channel, endpoint_url=endpoint_url
            )
        start = row.start_s or 0.0
        expressive = row.extra.get("expressive")
        segments.append(
            Utterance(
                conversation_id=row.conversation_id,
                utterance_index=row.utterance_index,
                speaker=row.speaker,
                start_s=start,
                end_s=start + samples.shape[0] / SAMPLE_RATE,
                emotion=row.emotion,
                expressive=None if expressive is None else bool(expressive),
                audio_uri=row.audio_uri,
                channel=row.channel,
                samples=samples,
            )
        )
    _check_audible(segments)
    return segments


def _check_audible(segments: list[Utterance]) -> None:
    """Fail a recording whose segments are all silent (read_recording checks whole files)."""
    peaks: dict[str, float] = {}
    for seg in segments:
        samples = seg.samples if seg.samples is not None else np.zeros(0, np.float32)
        peak = float(np.max(np.abs(samples))) if samples.size else 0.0
        peaks[seg.audio_uri] = max(peaks.get(seg.audio_uri, 0.0), peak)
    for uri, peak in peaks.items():
        if peak < SILENCE_PEAK:
            raise AudioError(
                f"all segments are silence (peak {peak:.2e} < {SILENCE_PEAK:.0e})", uri
            )


def _vad_rows(rows: Sequence[UtteranceRow], endpoint_url: str | None) -> list[Utterance]:
    turns: list[tuple[float, float, str, int | None, np.ndarray, str]] = []
    for row in rows:
        recording = read_recording(row.audio_uri, endpoint_url=endpoint_url)
        n_channels = recording.samples.shape[0]
        if row.channel is not None and not 0 <= row.channel < n_channels:
            raise SegmentError(
                f"channel {row.channel} out of range for a {n_channels}-channel recording",
                row.audio_uri,
            )
        for c in range(n_channels) if row.channel is None else [row.channel]:
            channel = c if n_channels > 1 else None
            named = n_channels == 1 or row.channel is not None
            speaker = row.speaker if named and row.speaker else f"ch{c}"
            signal = recording.samples[c]
            for start, end in detect_speech(signal, SAMPLE_RATE):
                piece = signal[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
                turns.append((start, end, speaker, channel, piece, row.audio_uri))
        if not any(turn[5] == row.audio_uri for turn in turns):
            raise AudioError("VAD found no speech in the recording", row.audio_uri)
    turns.sort(key=lambda turn: (turn[0], turn[3] or 0))
    conversation_id = rows[0].conversation_id
    return [
        Utterance(
            conversation_id=conversation_id,
            utterance_index=i,
            speaker=speaker,
            start_s=start,
            end_s=end,
            audio_uri=uri,
            channel=channel,
            samples=np.ascontiguousarray(piece),
        )
        for i, (start, end, speaker, channel, piece, uri) in enumerate(turns)
    ]
