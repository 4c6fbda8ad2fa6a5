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
3. VAD turns: a mono recording gives turns of ``row.speaker`` (``"unknown"`` when it is empty),
   with ``channel=None``; a manifest that knows no speaker says ``unknown``, and the table
   then says so too (one voice as far as the memory is concerned: conversation scope).
   A multi-channel recording is one speaker per channel (as in call
   recordings and the synthetic corpus): VAD runs on each channel separately and a turn on
   channel ``c`` gets ``speaker="ch{c}"`` and ``channel=c``. A row that names a ``channel``
   is segmented on that channel only, with the row's speaker. Turns of all VAD rows are ordered
   by start time (recordings of one conversation share a time origin) and numbered
   ``utterance_index`` 0..n-1; their emotion and expressive flag are None (a file-level
   label is not a turn's label).
   Rows with times and VAD rows cannot be mixed in one conversation.
4. Diarized turns: a row without times whose ``rttm_uri`` names a diarization (its turns given
   in ``diarizations``) is segmented by it, whatever the row count: each RTTM turn is one
   utterance of the RTTM's speaker on the recording's channel mix. Overlapping turns each keep
   their whole span, so the overlapped audio is in both (a mono mix cannot be separated, and
   trimming would make a backchannel inside another's turn vanish). A turn past the end of
   the recording is a DiarizationError; one that runs over the end is cut at the end.
5. Fitting the model: a VAD region or diarized turn longer than ``max_segment_s`` is cut at
   its quietest points into the fewest pieces that fit (:func:`split_at_quietest`); each piece
   is its own utterance with its own times, and ``pieces`` says into how many its region was cut.
   Segments from rows with times (the user's segmentation) are never cut here.
6. Turns of a mono recording: VAD finds speech regions, not turns (a region spans every
   speaker who talks without a 0.5 s pause), so a mono recording's regions are cut the same
   way into pieces of at most ``turn_max_s`` (``SegmentsConfig``), at the quietest points,
   which are the pauses between turns. Channels of a multi-channel recording (one speaker
   each) and RTTM turns are turns already: only rule 5 applies to them.

7. Diarized mono recordings: with diarization enabled (``SegmentsConfig.diarization``), the
   VAD regions of a mono recording whose row names no speaker (empty or ``unknown``) are
   split into speakers' turns by ``dpm_worker.diarization.diarize`` (speakers ``spk0``,
   ``spk1``, ... in order of first speech); rule 6 then cuts each turn. Stereo recordings,
   rows that name a speaker or a channel, and RTTM rows are unchanged.

A recording whose segments are all silent, or in which VAD finds no speech, raises AudioError.
"""

from __future__ import annotations

import math
import posixpath
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
from dpm_worker.audio.vad import detect_speech, split_at_quietest
from dpm_worker.corpus.schema import UNKNOWN_SPEAKER
from dpm_worker.diarization import DiarizationConfig, diarize
from dpm_worker.errors import AudioError, BadInputError, ConfigError, DiarizationError, SegmentError
from dpm_worker.telemetry import StageClock
from dpm_worker.utterance import Utterance

if TYPE_CHECKING:
    from dpm_worker.corpus.schema import SpeakerTurn, UtteranceRow


@dataclass(frozen=True)
class SegmentsConfig:
    """How recordings without a segmentation are cut (module docstring, rules 6 and 7).

    Args:
        max_s: the longest segment cut from a VAD region of a mono recording without RTTM,
            cut at its quietest points; None: regions are cut only
            to fit the model. Default 4.0 s, chosen on the two AMI excerpts (docs/dpm.md,
            "Recordings without a segmentation"): median segments of 2.25 s and 3.92 s
            against reference turns of 2.19 s and 1.94 s, where uncut regions gave 5.04 s and
            10.9 s; it stays inside the 1.5-5 s utterances the default model trained on.
        diarization: who speaks in a mono recording without RTTM (rule 7); off by default.
    """

    max_s: float | None = 4.0
    diarization: DiarizationConfig = field(default_factory=DiarizationConfig)

    def __post_init__(self) -> None:
        if self.max_s is not None and not (math.isfinite(self.max_s) and self.max_s >= 1.0):
            raise ConfigError(f"segments.max_s must be >= 1 s or null, got {self.max_s!r}")


def conversation_segments(
    rows: Sequence[UtteranceRow],
    *,
    endpoint_url: str | None = None,
    vad: bool | None = None,
    max_segment_s: float | None = None,
    diarizations: Mapping[str, Sequence[SpeakerTurn]] | None = None,
    on_row_error: Callable[[UtteranceRow, BadInputError], None] | None = None,
    turn_max_s: float | None = None,
    diarization: DiarizationConfig | None = None,
    timings: dict[str, float] | None = None,
) -> list[Utterance]:
    """Read the audio of one conversation's utterances (see the module docstring for rules).

    Args:
        rows: the conversation's manifest rows in dialogue order.
        endpoint_url: explicit S3 endpoint.
        vad: force VAD segmentation of rows without times (True), forbid it (False), or
            decide from the row count (None: only a single-row conversation is segmented).
        max_segment_s: the longest VAD or diarized segment; longer ones are cut at their
            quietest points (None: never cut).
        diarizations: the turns of each row's ``rttm_uri`` (``dpm_worker.corpus.read_rttm``).
        on_row_error: when given, a row with times that fails on its own (its times lie
            outside the recording, or its own clip, used by no other row, is undecodable or
            silent) is passed here with its error and left out; the other rows are read. A
            recording shared by several rows that cannot be decoded still raises: the rest of
            the conversation would be meaningless without it.
        turn_max_s: the longest segment cut from a VAD region of a mono recording (rule 6;
            None: such regions are cut only to fit ``max_segment_s``).
        diarization: rule 7's settings (None or not ``enabled``: no diarization).
        timings: when given, gets ``segment_s`` added: the seconds spent finding and cutting
            segments (VAD, diarization, cuts at the quietest points); the rest of the read is
            decoding and resampling.

    Raises:
        AudioError: a recording is unreadable, non-finite, all silent, or has no speech.
        SegmentError: bad times or channel, or timed and VAD rows mixed.
        DiarizationError: a row's ``rttm_uri`` has no turns given, or a turn lies past the
            end of its recording.
    """
    if not rows:
        return []
    conversations = {row.conversation_id for row in rows}
    if len(conversations) > 1:
        raise SegmentError(f"rows of several conversations given: {sorted(conversations)}")
    untimed = [row for row in rows if row.start_s is None and row.end_s is None]
    diarized = any(row.rttm_uri for row in untimed)
    use_vad = vad if vad is not None else len(rows) == 1
    if not ((use_vad or diarized) and untimed):
        return _cut_rows(rows, endpoint_url, on_row_error)
    if len(untimed) != len(rows):
        raise SegmentError(
            f"conversation {rows[0].conversation_id!r} mixes rows with times and rows to "
            "segment by VAD",
            untimed[0].audio_uri,
        )
    for name, value in (("max_segment_s", max_segment_s), ("turn_max_s", turn_max_s)):
        if value is not None and not value > 0:
            raise SegmentError(f"{name} must be > 0, got {value}")
    diarizer = diarization if diarization is not None and diarization.enabled else None
    clock = StageClock(timings)
    return _vad_rows(
        rows, endpoint_url, max_segment_s, diarizations or {}, turn_max_s, diarizer, clock
    )


def _cut_rows(
    rows: Sequence[UtteranceRow],
    endpoint_url: str | None,
    on_row_error: Callable[[UtteranceRow, BadInputError], None] | None,
) -> list[Utterance]:
    uses = Counter(row.audio_uri for row in rows)
    recordings: dict[str, Recording] = {}
    segments: list[Utterance] = []
    for row in rows:
        shared = uses[row.audio_uri] > 1
        if shared and row.audio_uri not in recordings:
            # Outside the row's try: a shared recording that cannot be decoded fails them all.
            recordings[row.audio_uri] = read_recording(row.audio_uri, endpoint_url=endpoint_url)
        try:
            if shared:
                samples = cut_segment(
                    recordings[row.audio_uri], row.start_s, row.end_s, row.channel
                )
            else:
                samples = read_segment(
                    row.audio_uri, row.start_s, row.end_s, row.channel, endpoint_url=endpoint_url
                )
                _check_audible(samples, row.audio_uri)
        except BadInputError as exc:
            if on_row_error is None:
                raise
            on_row_error(row, exc)
            continue
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
    for uri in recordings:
        parts = [
            seg.samples for seg in segments if seg.audio_uri == uri and seg.samples is not None
        ]
        if parts:  # (rows that all failed are reported already)
            _check_audible(np.concatenate(parts), uri)
    return segments


def _check_audible(samples: np.ndarray, uri: str) -> None:
    """Fail a recording whose segments are all silent (read_recording checks whole files)."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak < SILENCE_PEAK:
        raise AudioError(f"all segments are silence (peak {peak:.2e} < {SILENCE_PEAK:.0e})", uri)


def _vad_rows(
    rows: Sequence[UtteranceRow],
    endpoint_url: str | None,
    max_segment_s: float | None,
    diarizations: Mapping[str, Sequence[SpeakerTurn]],
    turn_max_s: float | None,
    diarizer: DiarizationConfig | None,
    clock: StageClock,
) -> list[Utterance]:
    # (start, end, speaker, channel, signal the times refer to, uri, longest piece)
    turns: list[tuple[float, float, str, int | None, np.ndarray, str, float | None]] = []
    one_voice = min((s for s in (max_segment_s, turn_max_s) if s is not None), default=None)
    for row in rows:
        recording = read_recording(row.audio_uri, endpoint_url=endpoint_url)
        if row.rttm_uri:
            turns.extend(
                t + (max_segment_s,) for t in _diarized_turns(row, recording, diarizations)
            )
            continue
        n_channels = recording.samples.shape[0]
        if row.channel is not None and not 0 <= row.channel < n_channels:
            raise SegmentError(
                f"channel {row.channel} out of range for a {n_channels}-channel recording",
                row.audio_uri,
            )
        before = len(turns)
        for c in range(n_channels) if row.channel is None else [row.channel]:
            channel = c if n_channels > 1 else None
            named = n_channels == 1 or row.channel is not None
            speaker = (row.speaker or UNKNOWN_SPEAKER) if named else f"ch{c}"
            signal = recording.samples[c]
            longest = one_voice if n_channels == 1 else max_segment_s  # rule 6: mono only
            with clock("segment_s"):
                regions = detect_speech(signal, SAMPLE_RATE)
                if (
                    diarizer is not None
                    and named
                    and row.channel is None
                    and speaker == UNKNOWN_SPEAKER
                ):
                    name = posixpath.splitext(posixpath.basename(row.audio_uri))[0]
                    spoken = [
                        (t.start_s, t.end_s, t.speaker)
                        for t in diarize(signal, regions, diarizer, name)
                    ]
                else:
                    spoken = [(start, end, speaker) for start, end in regions]
            for start, end, who in spoken:
                turns.append((start, end, who, channel, signal, row.audio_uri, longest))
        if len(turns) == before:
            raise AudioError("VAD found no speech in the recording", row.audio_uri)
    turns.sort(key=lambda turn: (turn[0], turn[3] or 0, turn[1]))
    segments: list[Utterance] = []
    for start, end, speaker, channel, signal, uri, longest in turns:
        with clock("segment_s"):
            spans = (
                split_at_quietest(signal, SAMPLE_RATE, start, end, longest)
                if longest is not None
                else [(start, end)]
            )
        for a, b in spans:
            samples = np.ascontiguousarray(signal[round(a * SAMPLE_RATE) : round(b * SAMPLE_RATE)])
            segments.append(
                Utterance(
                    conversation_id=rows[0].conversation_id,
                    utterance_index=len(segments),
                    speaker=speaker,
                    start_s=a,
                    end_s=b,
                    audio_uri=uri,
                    channel=channel,
                    samples=samples,
                    pieces=len(spans),
                )
            )
    return segments


def _diarized_turns(
    row: UtteranceRow, recording: Recording, diarizations: Mapping[str, Sequence[SpeakerTurn]]
) -> list[tuple[float, float, str, int | None, np.ndarray, str]]:
    """The row's RTTM turns on the recording's channel mix (module docstring, rule 4)."""
    rttm_uri = row.rttm_uri or ""
    if rttm_uri not in diarizations:
        raise DiarizationError("no turns were read for this rttm_uri", rttm_uri)
    samples = recording.samples
    signal = samples[0] if samples.shape[0] == 1 else samples.mean(axis=0, dtype=np.float32)
    duration = signal.shape[0] / SAMPLE_RATE
    turns: list[tuple[float, float, str, int | None, np.ndarray, str]] = []
    for turn in diarizations[rttm_uri]:
        if turn.start_s >= duration:
            raise DiarizationError(
                f"turn of {turn.speaker!r} at {turn.start_s:.3f} s starts past the end of "
                f"{row.audio_uri} ({duration:.3f} s): is it the RTTM of another recording?",
                rttm_uri,
            )
        end = min(turn.end_s, duration)
        turns.append((turn.start_s, end, turn.speaker, None, signal, row.audio_uri))
    return turns
