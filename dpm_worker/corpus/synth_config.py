"""The synthetic corpus generator's configuration: :class:`SynthConfig` and, for the
domain-randomized generator, :class:`RandomizeConfig` (validated on construction).

Its own module so that the generators (``synth``, ``randomized``, ``moods``) all import it and
none of them another's config.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from dpm_worker.corpus.channel import ChannelConfig
from dpm_worker.corpus.cues import CUE_MIXES
from dpm_worker.corpus.engines import ENGINES, select_voices
from dpm_worker.errors import ConfigError

# The rate the recordings are rendered at: the labeling pipeline's own (dpm_worker.audio reads
# and resamples any rate, so this is a choice, not a contract; corpus does not import audio).
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class RandomizeConfig:
    """What the randomized generator may draw from (the rest is SynthConfig's).

    Args:
        engines: engines to draw voices from (``espeak``, ``flite``, ``festival``).
        voice_families: fnmatch patterns of allowed voice families (``espeak:f*``,
            ``festival:kal``); empty: every family of ``engines``.
        cue_mixes: cue mixes to draw from (keys of ``cues.CUE_MIXES``).
        cue_keep_prob: probability that a cue is present in the ``random`` mix.
        gain_spread_db: half-width of the per-speaker recording gain (dB), on top of the
            speakers' baseline loudness spread.
        level_jitter_db: standard deviation of the per-utterance loudness variation (dB).
        channel: how recording channels vary.
    """

    engines: tuple[str, ...] = ENGINES
    voice_families: tuple[str, ...] = ()
    cue_mixes: tuple[str, ...] = ("random",)
    cue_keep_prob: float = 0.75
    gain_spread_db: float = 6.0
    level_jitter_db: float = 2.0
    channel: ChannelConfig = field(default_factory=ChannelConfig)

    def __post_init__(self) -> None:
        select_voices(self.engines, self.voice_families)  # raises when nothing is left
        bad = [m for m in self.cue_mixes if m not in CUE_MIXES]
        if not self.cue_mixes or bad:
            raise ConfigError(f"cue_mixes must be from {sorted(CUE_MIXES)}, got {self.cue_mixes!r}")
        if not 0.0 <= self.cue_keep_prob <= 1.0:
            raise ConfigError(f"cue_keep_prob must be in [0, 1], got {self.cue_keep_prob!r}")
        for name in ("gain_spread_db", "level_jitter_db"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 20.0):
                raise ConfigError(f"{name} must be in [0, 20], got {value!r}")


@dataclass(frozen=True)
class SynthConfig:
    """Every parameter of the generator; the same config gives the same bytes.

    Args:
        conversations: number of conversations.
        seed: the corpus seed (>= 0).
        min_utterances: fewest utterances in a conversation.
        max_utterances: most utterances in a conversation (counts are uniform in between).
        expressive_prob: probability that an utterance renders its mood in its prosody.
        mood_stay: probability that a speaker's mood stays the same on their next turn.
        mood_pull: when the mood changes, probability that it becomes the partner's mood.
        switch_prob: probability that the next turn goes to the other speaker.
        min_gap_s: shortest silence between turns.
        max_gap_s: longest silence between turns.
        min_duration_s: shortest utterance.
        max_duration_s: longest utterance.
        baseline_spread: scale of the speakers' baseline spread (1 = pitch, rate and loudness
            baselines vary about as much as the emotions shift them).
        emotion_strength: scale of the emotions' prosody shifts.
        jitter: scale of the per-utterance random prosody variation.
        female_prob: probability that a speaker has a female voice.
        noise_dbfs: level of the white noise floor added to the recording (None: none).
        sample_rate: output sample rate.
        randomize: render with several engines, per-conversation cues and varied channels
            (:mod:`dpm_worker.corpus.randomized`); None: the espeak-ng generator below.
        long_turn_prob: probability that a turn is long, its duration drawn from
            ``[long_turn_min_s, long_turn_max_s]`` instead (0: no draw is made, so a corpus
            without long turns is byte-identical to one made before this option existed,
            apart from the config recorded in its manifest).
        long_turn_min_s: shortest long turn (the default model reads at most 15.3 s whole).
        long_turn_max_s: longest long turn.
    """

    conversations: int
    seed: int
    min_utterances: int = 20
    max_utterances: int = 80
    expressive_prob: float = 0.5
    mood_stay: float = 0.85
    mood_pull: float = 0.5
    switch_prob: float = 0.9
    min_gap_s: float = 0.2
    max_gap_s: float = 0.9
    min_duration_s: float = 1.5
    max_duration_s: float = 5.0
    baseline_spread: float = 1.0
    emotion_strength: float = 1.0
    jitter: float = 1.0
    female_prob: float = 0.5
    noise_dbfs: float | None = -65.0
    sample_rate: int = SAMPLE_RATE
    randomize: RandomizeConfig | None = None
    long_turn_prob: float = 0.0
    long_turn_min_s: float = 16.0
    long_turn_max_s: float = 30.0

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        check(self.conversations >= 1, "conversations", ">= 1")
        check(self.seed >= 0, "seed", ">= 0")
        check(self.min_utterances >= 1, "min_utterances", ">= 1")
        check(self.max_utterances >= self.min_utterances, "max_utterances", ">= min_utterances")
        probabilities = ("expressive_prob", "mood_stay", "mood_pull", "switch_prob", "female_prob")
        for name in (*probabilities, "long_turn_prob"):
            value = getattr(self, name)
            check(math.isfinite(value) and 0.0 <= value <= 1.0, name, "in [0, 1]")
        check(0.0 <= self.min_gap_s, "min_gap_s", ">= 0")
        check(self.max_gap_s >= self.min_gap_s, "max_gap_s", ">= min_gap_s")
        check(self.min_duration_s >= 0.5, "min_duration_s", ">= 0.5")
        check(
            self.max_duration_s >= self.min_duration_s + 0.5,
            "max_duration_s",
            ">= min_duration_s + 0.5",
        )
        for name in ("baseline_spread", "emotion_strength", "jitter"):
            value = getattr(self, name)
            check(math.isfinite(value) and 0.0 <= value <= 3.0, name, "in [0, 3]")
        check(
            self.noise_dbfs is None or -140.0 <= self.noise_dbfs <= -30.0,
            "noise_dbfs",
            "in [-140, -30]",
        )
        check(8_000 <= self.sample_rate <= 48_000, "sample_rate", "in [8000, 48000]")
        check(self.long_turn_min_s >= self.max_duration_s, "long_turn_min_s", ">= max_duration_s")
        check(
            self.long_turn_max_s >= self.long_turn_min_s + 0.5,
            "long_turn_max_s",
            ">= long_turn_min_s + 0.5",
        )

    def conversation_id(self, index: int) -> str:
        return f"conv_{index:0{max(4, len(str(self.conversations - 1)))}d}"

    def to_json(self) -> str:
        values = asdict(self)
        if self.randomize is None:  # keeps the espeak-ng generator's manifests byte-identical
            del values["randomize"]
        return json.dumps(values, sort_keys=True)
