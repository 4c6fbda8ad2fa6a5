"""Two-speaker mono conversations built from real actors, for ``dpm bench diarization``.

Each conversation takes two speakers of one acted corpus (RAVDESS actors, EMOVO speakers) and
alternates their 4-class clips (each trimmed to its speech by the VAD): mostly the other
speaker next, sometimes the same one again after a pause; pauses of 0.3-1.2 s, and a share of
the changes of speaker overlap the previous turn by 0.1-0.5 s. The mix is one mono 16 kHz
file; the reference is the clips' placement (an RTTM), each turn keeping its clip's emotion.
Clips are drawn class-balanced so every conversation changes mood: emotion changes a voice.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from dpm_worker.audio import SAMPLE_RATE, detect_speech, read_recording, write_audio
from dpm_worker.corpus import SpeakerTurn, format_rttm

_RAVDESS = re.compile(r"^03-01-(\d\d)-\d\d-\d\d-\d\d-(\d\d)\.wav$")
_RAVDESS_4 = {"01": "neutral", "02": "neutral", "03": "happy", "04": "sad", "05": "angry"}
_EMOVO = re.compile(r"^(neu|gio|tri|rab)-([fm]\d)-\w+\.wav$")
_EMOVO_4 = {"neu": "neutral", "gio": "happy", "tri": "sad", "rab": "angry"}


@dataclass(frozen=True)
class Speaker:
    """One actor: a name, a gender ("f"/"m") and their 4-class clips ``(path, emotion)``."""

    name: str
    gender: str
    clips: tuple[tuple[str, str], ...]


@dataclass
class Conversation:
    """A built mono conversation: its samples (16 kHz) and reference turns with emotions."""

    conversation_id: str
    corpus: str
    pair: str  # "same" or "mixed" gender, or "single" (one speaker)
    samples: np.ndarray
    turns: list[SpeakerTurn] = field(default_factory=list)
    emotions: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / SAMPLE_RATE


def ravdess_speakers(root: str, actors: range = range(19, 25)) -> list[Speaker]:
    """RAVDESS actors (odd male, even female) with their 4-class clips."""
    out = []
    for actor in actors:
        folder = Path(root) / f"Actor_{actor:02d}"
        clips = []
        for path in sorted(folder.glob("*.wav")):
            match = _RAVDESS.match(path.name)
            if match and match.group(1) in _RAVDESS_4:
                clips.append((str(path), _RAVDESS_4[match.group(1)]))
        out.append(Speaker(f"ravdess_{actor:02d}", "m" if actor % 2 else "f", tuple(clips)))
    return [s for s in out if s.clips]


def emovo_speakers(root: str) -> list[Speaker]:
    """EMOVO speakers (f1-f3, m1-m3) with their 4-class clips."""
    out = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        clips = []
        for path in sorted(folder.glob("*.wav")):
            match = _EMOVO.match(path.name)
            if match:
                clips.append((str(path), _EMOVO_4[match.group(1)]))
        if clips:
            out.append(Speaker(f"emovo_{folder.name}", folder.name[0], tuple(clips)))
    return out


class ClipCache:
    """Clips decoded once, mono 16 kHz, trimmed to the VAD's speech (none found: kept whole)."""

    def __init__(self) -> None:
        self._clips: dict[str, np.ndarray] = {}

    def get(self, path: str) -> np.ndarray:
        if path not in self._clips:
            samples = read_recording(path).samples.mean(axis=0).astype(np.float32)
            spans = detect_speech(samples, SAMPLE_RATE, speech_pad_s=0.03)
            if spans:
                lo, hi = round(spans[0][0] * SAMPLE_RATE), round(spans[-1][1] * SAMPLE_RATE)
                samples = samples[lo:hi]
            self._clips[path] = samples
        return self._clips[path]


def build_conversations(
    corpus: str,
    speakers: list[Speaker],
    clips: ClipCache,
    *,
    turns: int = 12,
    seed: int = 0,
    overlap_share: float = 0.2,
) -> Iterator[Conversation]:
    """One conversation per pair of ``speakers`` (seeded), in the pairs' order."""
    for n, (a, b) in enumerate(combinations(speakers, 2)):
        rng = np.random.default_rng([seed, n])
        yield _conversation(corpus, (a, b), clips, rng, turns, overlap_share)


def build_single_conversations(
    corpus: str, speakers: list[Speaker], clips: ClipCache, *, turns: int = 12, seed: int = 0
) -> Iterator[Conversation]:
    """One conversation of each speaker alone (their moods change, the voice does not): the
    case where a diarizer must find one speaker. Seeded apart from the pairs' conversations."""
    for n, speaker in enumerate(speakers):
        rng = np.random.default_rng([seed, 1_000_000 + n])
        yield _conversation(corpus, (speaker, speaker), clips, rng, turns, overlap_share=0.0)


def _conversation(
    corpus: str,
    pair: tuple[Speaker, Speaker],
    clips: ClipCache,
    rng: np.random.Generator,
    n_turns: int,
    overlap_share: float,
) -> Conversation:
    conv_id = f"{pair[0].name}__{pair[1].name}"
    kind = (
        "single" if pair[0] is pair[1] else "same" if pair[0].gender == pair[1].gender else "mixed"
    )
    placed: list[tuple[int, float, np.ndarray, str]] = []  # speaker, start, samples, emotion
    who, t = int(rng.integers(2)), 0.5
    for i in range(n_turns):
        if i:
            same = rng.random() < 0.15
            who = who if same else 1 - who
            if not same and rng.random() < overlap_share:
                t -= rng.uniform(0.1, 0.5)
            else:
                t += rng.uniform(0.3, 1.2)
        emotion = str(rng.choice(sorted({e for _, e in pair[who].clips})))
        choices = [p for p, e in pair[who].clips if e == emotion]
        audio = clips.get(choices[int(rng.integers(len(choices)))])
        placed.append((who, t, audio, emotion))
        t += audio.shape[0] / SAMPLE_RATE
    mix = np.zeros(round((t + 0.5) * SAMPLE_RATE), np.float32)
    conv = Conversation(conv_id, corpus, kind, mix)
    for who, start, audio, emotion in placed:
        at = round(start * SAMPLE_RATE)
        mix[at : at + audio.shape[0]] += audio
        end = (at + audio.shape[0]) / SAMPLE_RATE
        conv.turns.append(SpeakerTurn(conv_id, pair[who].name, at / SAMPLE_RATE, end))
        conv.emotions.append(emotion)
    peak = float(np.abs(mix).max())
    if peak > 0.99:  # overlaps can clip
        mix *= 0.99 / peak
    return conv


def write_conversation(conv: Conversation, folder: Path) -> str:
    """Write the mix (16-bit WAV) and its reference RTTM; return the WAV's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{conv.conversation_id}.wav"
    write_audio(str(path), conv.samples, SAMPLE_RATE)
    (folder / f"{conv.conversation_id}.ref.rttm").write_text(format_rttm(conv.turns))
    return str(path)
