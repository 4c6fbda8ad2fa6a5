"""Speaker-relative loudness and pitch: each speaker's running reference levels.

A voice's own pitch and a recording's own gain differ between speakers far more than one
speaker's emotions move them, so absolute levels mostly say *who* speaks and through what
line, not how they feel. Speech-emotion systems normalise prosody per speaker for that reason.
Here the reference of a speaker is the running mean, over the speaker's utterances so far in
the conversation (the current one included), of each utterance's median voiced log-pitch and
median non-silent log-energy. It is causal: an utterance's codes never depend on later audio,
so streaming labeling and training see the same codes.

The first utterance of a speaker is its own reference (its levels become 0); from then on the
reference settles on the speaker's habitual level, and a raised or lowered voice shows as a
shift from it.

A codebook with ``spectral_relative`` also takes each speaker's mean spectral vector (over the
non-silent blocks of their utterances) as a reference: voice quality and spectral balance say
as much about who speaks as pitch does (per-speaker normalisation of eGeMAPS features is the
field's standard for that reason).

A batch job holds the whole recording, so it can do better on a speaker's first utterances:
:class:`ConversationLevels` takes the mean over *all* the speaker's utterances in the
conversation as the reference of every one of them (``speaker_reference: conversation`` in the
tokenizer's config). Issue 11 measured what the look-ahead is worth for the five-statistic
logistic baseline: expressive accuracy 0.464 with the running mean, 0.503 with the
conversation's (docs/randomized.md).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from dpm_worker.speech.features import SILENCE_LOG_ENERGY, BlockFeatures


@dataclass
class _Running:
    f0_sum: float = 0.0
    f0_n: int = 0
    energy_sum: float = 0.0
    energy_n: int = 0
    spectral_sum: torch.Tensor | None = None

    def add(self, f0: float, energy: float, spectral: torch.Tensor | None = None) -> None:
        if not math.isnan(f0):
            self.f0_sum += f0
            self.f0_n += 1
        self.energy_sum += energy
        self.energy_n += 1
        if spectral is not None:
            self.spectral_sum = (
                spectral if self.spectral_sum is None else self.spectral_sum + spectral
            )

    def spectral(self) -> torch.Tensor | None:
        return None if self.spectral_sum is None else self.spectral_sum / self.energy_n

    def reference(self) -> tuple[float, float]:
        f0_ref = self.f0_sum / self.f0_n if self.f0_n else math.nan
        return f0_ref, self.energy_sum / self.energy_n


def utterance_levels(feats: BlockFeatures) -> tuple[float, float]:
    """(median voiced log2 f0 or NaN when nothing is voiced, median non-silent log10 energy)."""
    voiced = feats.log_f0[~torch.isnan(feats.log_f0)]
    f0 = float(voiced.median()) if voiced.numel() else math.nan
    loud = feats.log_energy[feats.log_energy > SILENCE_LOG_ENERGY]
    energy = float((loud if loud.numel() else feats.log_energy).median())
    return f0, energy


def utterance_spectral(feats: BlockFeatures) -> torch.Tensor:
    """The mean spectral vector of the utterance's non-silent blocks (all blocks when every one
    is silent), float64: the spectral reference of ``spectral_relative`` codebooks."""
    loud = feats.log_energy > SILENCE_LOG_ENERGY
    rows = feats.spectral[loud] if bool(loud.any()) else feats.spectral
    return rows.to(torch.float64).mean(dim=0)


class SpeakerLevels:
    """Running reference levels per speaker key (a conversation and speaker, for example).

    Args:
        spectral: also keep each speaker's mean spectral vector (:meth:`spectral_reference`).
    """

    def __init__(self, *, spectral: bool = False) -> None:
        self._running: dict[Hashable, _Running] = {}
        self._spectral = spectral

    def _levels(self, feats: BlockFeatures) -> tuple[float, float, torch.Tensor | None]:
        return (*utterance_levels(feats), utterance_spectral(feats) if self._spectral else None)

    def spectral_reference(self, key: Hashable) -> torch.Tensor | None:
        """The mean spectral vector of ``key``'s utterances counted so far (None unless the
        levels keep it)."""
        return self._running[key].spectral()

    def update(self, key: Hashable, feats: BlockFeatures) -> tuple[float, float]:
        """Add one utterance of ``key``'s speaker; return the reference (log2 f0, log10 energy).

        The pitch reference is NaN until the speaker has had a voiced utterance (an utterance
        without voiced blocks has no pitch codes to shift).
        """
        run = self._running.setdefault(key, _Running())
        run.add(*self._levels(feats))
        return run.reference()


class ConversationLevels(SpeakerLevels):
    """Fixed reference levels per speaker key: the mean over all the speaker's utterances that
    were :meth:`add`-ed (a whole conversation's), the same for every one of them."""

    def add(self, key: Hashable, feats: BlockFeatures) -> None:
        """Count one utterance of ``key``'s speaker into its reference."""
        self._running.setdefault(key, _Running()).add(*self._levels(feats))

    def add_stacked(
        self, keys: Sequence[Hashable], feats: BlockFeatures, counts: list[int]
    ) -> None:
        """Count several utterances whose blocks are stacked in ``feats``, ``counts[i]`` blocks
        of speaker ``keys[i]`` each (as the tokenizer's ``block_features`` returns them)."""
        for key, spectral, energy, f0 in zip(
            keys,
            feats.spectral.split(counts),
            feats.log_energy.split(counts),
            feats.log_f0.split(counts),
            strict=True,
        ):
            self.add(key, BlockFeatures(spectral=spectral, log_energy=energy, log_f0=f0))

    def update(self, key: Hashable, feats: BlockFeatures) -> tuple[float, float]:
        """The reference of ``key``'s speaker (``feats`` must have been added; not re-counted).

        Raises:
            KeyError: ``key`` had no utterance added.
        """
        return self._running[key].reference()


def relative_features(
    feats: BlockFeatures,
    reference: tuple[float, float],
    spectral_reference: torch.Tensor | None = None,
) -> BlockFeatures:
    """``feats`` with pitch and loudness as shifts from the speaker's reference levels, and the
    spectral vector as a shift from ``spectral_reference`` when one is given."""
    f0_ref, energy_ref = reference
    log_f0 = feats.log_f0 - (0.0 if math.isnan(f0_ref) else f0_ref)
    spectral = feats.spectral
    if spectral_reference is not None:
        spectral = (spectral.to(torch.float64) - spectral_reference).to(spectral.dtype)
    return BlockFeatures(spectral=spectral, log_energy=feats.log_energy - energy_ref, log_f0=log_f0)
