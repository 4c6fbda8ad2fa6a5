"""The built-in speech tokenizer's shape: :class:`SpeechTokenizerConfig` (validated here, so a
bad codebook shape fails before anything is featurized)."""

from __future__ import annotations

from dataclasses import dataclass

from dpm_worker.audio import SAMPLE_RATE
from dpm_worker.errors import ConfigError
from dpm_worker.speech.smile import SPECTRAL_DIM

SPEAKER_REFERENCES = ("running", "conversation")
FEATURE_SETS = ("mel", "egemaps")


@dataclass(frozen=True)
class SpeechTokenizerConfig:
    """Shape of the built-in product codebook.

    Args:
        n_spectral: k-means codes for the spectral shape (phone class, roughly).
        n_energy: k-means levels of unnormalised log-energy.
        n_pitch: pitch levels; level 0 is "unvoiced", the rest are k-means levels of log f0.
        n_mels: mel bands of the spectral feature.
        sample_rate: input sample rate (the interface fixes 16 kHz).
        rate_hz: tokens per second.
        speaker_relative: quantize pitch and loudness as shifts from the speaker's running
            reference levels in the conversation (``dpm_worker/speech/speaker_levels.py``)
            instead of absolute levels; the codebook's levels are then shifts.
        speaker_reference: a speaker-relative codebook's reference levels: ``running`` (the
            mean of the speaker's utterances so far: causal, an utterance's codes never depend
            on later audio) or ``conversation`` (the mean of all the speaker's utterances in the
            conversation: a batch job holds the whole recording; a conversation's block
            features are then held until its last utterance is featurized, and coded after).
        features: the frame features: ``mel`` (log-mel shape, autocorrelation pitch; the
            models up to dpm-default-v5) or ``egemaps`` (openSMILE's eGeMAPSv02 descriptors:
            F0 and 23 spectral-balance and voice-quality descriptors; ``speech/smile.py``).
        spectral_relative: a speaker-relative codebook also codes the spectral vector as a
            shift from the speaker's mean (voice quality is a speaker's habit as pitch is).
    """

    n_spectral: int = 4
    n_energy: int = 8
    n_pitch: int = 16
    n_mels: int = 40
    sample_rate: int = SAMPLE_RATE
    rate_hz: float = 25.0
    speaker_relative: bool = False
    speaker_reference: str = "running"
    features: str = "mel"
    spectral_relative: bool = False

    def __post_init__(self) -> None:
        if self.features not in FEATURE_SETS:
            raise ConfigError(f"features must be one of {FEATURE_SETS}, got {self.features!r}")
        if self.spectral_relative and not self.speaker_relative:
            raise ConfigError("spectral_relative needs speaker_relative: true")
        if self.speaker_reference not in SPEAKER_REFERENCES:
            raise ConfigError(
                f"speaker_reference must be one of {SPEAKER_REFERENCES}, got {self.speaker_reference!r}"
            )
        for name in ("n_spectral", "n_energy"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_pitch < 2:
            raise ConfigError(f"n_pitch must be >= 2 (unvoiced + voiced), got {self.n_pitch}")
        if self.n_mels < 4:
            raise ConfigError(f"n_mels must be >= 4, got {self.n_mels}")
        if (
            self.rate_hz <= 0
            or abs(self.sample_rate / self.rate_hz - round(self.sample_rate / self.rate_hz)) > 1e-6
        ):
            raise ConfigError(
                f"rate_hz must divide sample_rate {self.sample_rate} into whole samples, got {self.rate_hz}"
            )

    @property
    def vocab_size(self) -> int:
        return self.n_spectral * self.n_energy * self.n_pitch

    @property
    def spectral_dim(self) -> int:
        """Length of the spectral vector the spectral codes quantize."""
        return self.n_mels if self.features == "mel" else SPECTRAL_DIM
