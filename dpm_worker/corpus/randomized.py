"""The domain-randomized synthetic corpus (issue 11): several engines, per-conversation cues,
prosody after synthesis, loudness that is not normalised, and varied recording channels.

The conversation structure is the espeak-ng generator's (:mod:`dpm_worker.corpus.synth`: two
speakers, a mood chain per speaker, expressive and non-expressive turns); what differs is how a
turn is rendered. Per conversation are drawn: a cue mix and the size of every emotion's shift
(:mod:`dpm_worker.corpus.cues`), whether pitch and rate go through the engine or through sox,
and per speaker a voice of an allowed engine and family (:mod:`dpm_worker.corpus.engines`),
a baseline prosody and a recording line (:mod:`dpm_worker.corpus.channel`). An utterance's
loudness is the engine's own output level for that sentence moved by the speaker's gain and
the emotion, not a normalised level.

Every draw comes from the generator seeded by ``(seed, conversation index)`` in a fixed order,
and every engine and sox call is deterministic, so the same config gives the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from dpm_worker.corpus.channel import Line, apply_line, draw_line
from dpm_worker.corpus.cues import (
    CueProfile,
    draw_cue_profile,
    insert_pauses,
    sox_pitch_tempo,
    speech_level_dbfs,
    tilt,
)
from dpm_worker.corpus.engines import (
    EngineVoice,
    SynthRequest,
    select_voices,
    synthesize_requests,
)
from dpm_worker.corpus.moods import next_mood
from dpm_worker.corpus.schema import DEFAULT_LABELS, MANIFEST_SCHEMA
from dpm_worker.corpus.synth_config import RandomizeConfig, SynthConfig
from dpm_worker.corpus.synth_text import compose_sentence
from dpm_worker.corpus.synth_voices import LANGUAGES
from dpm_worker.errors import ConfigError

RANDOMIZED_SCHEMA = pa.schema(
    list(MANIFEST_SCHEMA)
    + [
        pa.field("expressive", pa.bool_(), nullable=False),
        pa.field("intensity", pa.float32(), nullable=False),
        pa.field("voice", pa.string(), nullable=False),
        pa.field("engine", pa.string(), nullable=False),
        pa.field("voice_family", pa.string(), nullable=False),
        pa.field("cue_mix", pa.string(), nullable=False),
        pa.field("cues", pa.string(), nullable=False),
        pa.field("line", pa.string(), nullable=False),
        pa.field("f0_hz", pa.float32(), nullable=False),
        pa.field("range_factor", pa.float32(), nullable=False),
        pa.field("rate_factor", pa.float32(), nullable=False),
        pa.field("gain_db", pa.float32(), nullable=False),
        pa.field("pause_ms", pa.float32(), nullable=False),
        pa.field("tilt", pa.float32(), nullable=False),
    ]
)
_ROUNDS = 3  # synthesis rounds that re-compose sentences whose audio missed the duration range


@dataclass(frozen=True)
class RandomSpeaker:
    """A speaker of the randomized corpus: a voice, a baseline prosody and a line."""

    name: str
    channel: int
    voice: EngineVoice
    language: str
    f0_hz: float
    range_factor: float
    rate_factor: float
    level_dbfs: float
    pause_ms: float
    line: Line

    @property
    def label(self) -> str:
        return f"{self.voice.family}/{self.language}" if self.language else self.voice.family


@dataclass
class _Turn:
    speaker: int
    mood: str
    expressive: bool
    intensity: float
    gap_samples: int
    target_s: float
    text: str = ""
    request: SynthRequest | None = None
    post: dict[str, float] = field(default_factory=dict)
    audio: np.ndarray | None = None


def _draw_speaker(
    rng: np.random.Generator,
    name: str,
    channel: int,
    voices: tuple[EngineVoice, ...],
    config: SynthConfig,
    randomize: RandomizeConfig,
    avoid: str,
) -> RandomSpeaker:
    female = bool(rng.random() < config.female_prob)
    pool = [v for v in voices if v.female == female] or list(voices)
    for _ in range(10):  # a partner with another voice when the pool allows
        voice = pool[int(rng.integers(len(pool)))]
        language = LANGUAGES[int(rng.integers(len(LANGUAGES)))] if voice.engine == "espeak" else ""
        if f"{voice.family}/{language}" != avoid:
            break
    u = rng.uniform(-1.0, 1.0, size=6) * config.baseline_spread
    spread = randomize.gain_spread_db
    return RandomSpeaker(
        name=name,
        channel=channel,
        voice=voice,
        language=language,
        f0_hz=voice.f0_hz * 2.0 ** (u[0] * 3.0 / 12.0),
        range_factor=math.exp(u[1] * math.log(1.2)),
        rate_factor=math.exp(u[2] * math.log(1.22)),
        level_dbfs=-26.0 + u[3] * 5.0 + u[4] * spread,
        pause_ms=max(0.0, 10.0 + 20.0 * u[5]),
        line=draw_line(rng, randomize.channel),
    )


def _plan_prosody(
    turn: _Turn,
    speaker: RandomSpeaker,
    profile: CueProfile,
    rng: np.random.Generator,
    jitter: float,
    level_jitter_db: float,
) -> None:
    """Fill the turn's engine request (native controls) and post-synthesis operations."""
    m, k = turn.mood, turn.intensity
    j = rng.normal(0.0, 1.0, size=4) * jitter
    f0 = speaker.f0_hz * 2.0 ** ((profile.shift(m, "pitch", k) + 0.6 * j[0]) / 12.0)
    range_factor = speaker.range_factor * profile.shift(m, "range", k) * math.exp(0.08 * j[1])
    rate = speaker.rate_factor * profile.shift(m, "rate", k) * math.exp(0.04 * j[2])
    level = speaker.level_dbfs + profile.shift(m, "loudness", k)
    level += level_jitter_db * j[3]
    voice = speaker.voice
    native_pitch = voice.native_pitch and not profile.post_pitch
    native_rate = voice.native_rate and not profile.post_rate
    turn.request = SynthRequest(
        voice=voice,
        text=turn.text,
        language=speaker.language or "en-us",
        f0_hz=f0 if native_pitch else None,
        range_factor=range_factor if voice.native_pitch else 1.0,
        rate_factor=rate if native_rate else 1.0,
    )
    turn.post = {
        "cents": 0.0 if native_pitch else 1200.0 * math.log2(f0 / voice.f0_hz),
        "tempo": 1.0 if native_rate else rate,
        "pause_ms": speaker.pause_ms + profile.shift(m, "pauses", k),
        "tilt": float(np.clip(profile.shift(m, "quality", k), -0.9, 0.9)),
        "gain_db": level - voice.level_dbfs,
        "f0_hz": f0,
        "range_factor": range_factor if voice.native_pitch else 1.0,
        "rate_factor": rate,
    }


def _render(audio: np.ndarray, post: dict[str, float], sample_rate: int) -> np.ndarray:
    audio = sox_pitch_tempo(audio, sample_rate, post["cents"], post["tempo"])
    audio = insert_pauses(audio, sample_rate, post["pause_ms"])
    before = speech_level_dbfs(audio, sample_rate)
    audio = tilt(audio, post["tilt"])
    # tilt alone would change loudness; the loudness cue is the gain's job
    gain_db = post["gain_db"] + before - speech_level_dbfs(audio, sample_rate)
    return np.clip(audio * np.float32(10.0 ** (gain_db / 20.0)), -0.999, 0.999).astype(np.float32)


def _fit(audio: np.ndarray, lo: float, hi: float, sample_rate: int) -> np.ndarray:
    if audio.size > int(hi * sample_rate):
        audio = audio[: int(hi * sample_rate)].copy()
        fade = int(0.02 * sample_rate)
        audio[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    elif audio.size < int(math.ceil(lo * sample_rate)):
        pad = np.zeros(int(math.ceil(lo * sample_rate)) - audio.size, np.float32)
        audio = np.concatenate([audio, pad])
    return audio


def _synthesize_turns(
    turns: list[_Turn],
    speakers: list[RandomSpeaker],
    profile: CueProfile,
    rng: np.random.Generator,
    config: SynthConfig,
    randomize: RandomizeConfig,
) -> None:
    """Render every turn; sentences whose audio misses the duration range are re-composed and
    rendered again in the next round (each engine's batch runs once per round)."""
    lo, hi, sr = config.min_duration_s, config.max_duration_s, config.sample_rate
    words = {id(t): t.target_s * 3.2 * speakers[t.speaker].rate_factor for t in turns}
    pending = list(turns)
    for round_ in range(_ROUNDS):
        for turn in pending:
            turn.text = compose_sentence(rng, words[id(turn)])
            _plan_prosody(
                turn, speakers[turn.speaker], profile, rng, config.jitter, randomize.level_jitter_db
            )
        requests = [t.request for t in pending if t.request is not None]
        for turn, raw in zip(pending, synthesize_requests(requests, sr), strict=True):
            turn.audio = _render(raw, turn.post, sr)
        missed = [t for t in pending if not lo <= t.audio.size / sr <= hi]  # type: ignore[union-attr]
        if round_ == _ROUNDS - 1 or not missed:
            break
        for turn in missed:
            duration = max(turn.audio.size / sr, 0.1)  # type: ignore[union-attr]
            words[id(turn)] *= (lo + hi) / 2.0 / duration
        pending = missed
    for turn in turns:
        turn.audio = _fit(turn.audio, lo, hi, sr)  # type: ignore[arg-type]


def generate_randomized_conversation(
    index: int, config: SynthConfig
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render conversation ``index`` of a randomized corpus: its stereo signal (frames x 2,
    float32, channels through their lines) and its manifest rows (``RANDOMIZED_SCHEMA``)."""
    randomize = config.randomize
    if randomize is None:
        raise ConfigError("generate_randomized_conversation needs config.randomize")
    rng = np.random.default_rng([config.seed, index])
    conv_id = config.conversation_id(index)
    sr = config.sample_rate
    voices = select_voices(randomize.engines, randomize.voice_families)
    n_utt = int(rng.integers(config.min_utterances, config.max_utterances + 1))
    profile = draw_cue_profile(rng, randomize.cue_mixes, randomize.cue_keep_prob, DEFAULT_LABELS)
    first = _draw_speaker(rng, f"{conv_id}_A", 0, voices, config, randomize, avoid="")
    second = _draw_speaker(rng, f"{conv_id}_B", 1, voices, config, randomize, first.label)
    speakers = [first, second]
    moods = [DEFAULT_LABELS[int(rng.integers(len(DEFAULT_LABELS)))] for _ in speakers]
    spoken = [False, False]
    current = int(rng.integers(2))
    lo, hi = config.min_duration_s, config.max_duration_s
    turns: list[_Turn] = []
    for i in range(n_utt):
        gap = 0
        if i > 0:
            if rng.random() < config.switch_prob:
                current = 1 - current
            gap = int(round(rng.uniform(config.min_gap_s, config.max_gap_s) * sr))
        if spoken[current]:
            moods[current] = next_mood(rng, moods[current], moods[1 - current], config)
        spoken[current] = True
        expressive = bool(rng.random() < config.expressive_prob)
        intensity = float(rng.uniform(0.8, 1.2)) * config.emotion_strength if expressive else 0.0
        target = float(rng.uniform(lo + 0.2 * (hi - lo), hi - 0.2 * (hi - lo)))
        turns.append(_Turn(current, moods[current], expressive, intensity, gap, target))
    _synthesize_turns(turns, speakers, profile, rng, config, randomize)
    cursor = int(0.4 * sr)
    starts = []
    for turn in turns:
        cursor += turn.gap_samples
        starts.append(cursor)
        cursor += turn.audio.size  # type: ignore[union-attr]
    signal = np.zeros((cursor + int(0.4 * sr), 2), dtype=np.float32)
    for turn, start in zip(turns, starts, strict=True):
        signal[start : start + turn.audio.size, turn.speaker] = turn.audio  # type: ignore[union-attr]
    for c, speaker in enumerate(speakers):
        signal[:, c] = apply_line(signal[:, c], speaker.line, sr, rng)
    if config.noise_dbfs is not None:
        floor = rng.standard_normal(signal.shape, dtype=np.float32)
        signal += floor * np.float32(10.0 ** (config.noise_dbfs / 20.0))
    rows = []
    for i, (turn, start) in enumerate(zip(turns, starts, strict=True)):
        speaker = speakers[turn.speaker]
        rows.append(
            {
                "conversation_id": conv_id,
                "utterance_index": i,
                "speaker": speaker.name,
                "audio_uri": f"audio/{conv_id}.flac",
                "start_s": start / sr,
                "end_s": (start + turn.audio.size) / sr,  # type: ignore[union-attr]
                "channel": speaker.channel,
                "text": turn.text,
                "emotion": turn.mood,
                "expressive": turn.expressive,
                "intensity": turn.intensity,
                "voice": speaker.label,
                "engine": speaker.voice.engine,
                "voice_family": speaker.voice.family,
                "cue_mix": profile.mix,
                "cues": "+".join(profile.cues),
                "line": speaker.line.name,
                "f0_hz": turn.post["f0_hz"],
                "range_factor": turn.post["range_factor"],
                "rate_factor": turn.post["rate_factor"],
                "gain_db": turn.post["gain_db"],
                "pause_ms": turn.post["pause_ms"],
                "tilt": turn.post["tilt"],
            }
        )
    return signal, rows
