"""An utterance's acoustic summary: pooled statistics of its (speaker-relative) block features.

The speech codes quantize every 40 ms block on its own, and a reader of their histogram loses
what pooled statistics of the same features keep: on RAVDESS (actors 01-18 -> 19-24) a linear
reader of the codes' histogram reaches 0.60-0.62 UA, one of the pooled continuous eGeMAPS block
features 0.77 (docs/real_speech.md). So the tokenizer can also give each utterance this
vector, and a model with an acoustic head (``dpm_worker.model.acoustic_head``) reads it beside
the speech-LLM.

The statistics are over the utterance's *active* blocks (log-energy within 3 decades of its
loudest block): the mean and standard deviation of every spectral dimension; the mean, spread,
90th and 10th percentile of log-energy; the share of active and of voiced blocks; the mean,
spread and 10-90 percentile range of voiced log2-pitch and its mean absolute change between
voiced blocks. Given speaker-relative features (the codebook's references), the means are
shifts from the speaker's habitual levels, as the codes are. float64 and fixed-order numpy
reductions: the same blocks give the same vector bitwise.
"""

from __future__ import annotations

import numpy as np

from dpm_worker.speech.features import BlockFeatures

# An active block is within this many decades of log10 energy of the utterance's loudest.
ACTIVE_RANGE = 3.0
SCALAR_NAMES = (
    "energy_mean",
    "energy_std",
    "energy_p90",
    "energy_p10",
    "active_share",
    "voiced_share",
    "f0_mean",
    "f0_std",
    "f0_range",
    "f0_delta",
)


def summary_names(spectral_dim: int) -> list[str]:
    """The name of every entry of a summary over ``spectral_dim`` spectral dimensions."""
    return [
        *(f"spectral_mean_{i}" for i in range(spectral_dim)),
        *(f"spectral_std_{i}" for i in range(spectral_dim)),
        *SCALAR_NAMES,
    ]


def utterance_summary(feats: BlockFeatures) -> np.ndarray:
    """The float64 summary vector of one utterance's blocks (:func:`summary_names` order).

    Statistics without data are 0 (the speaker's reference level, for relative features): the
    pitch statistics of an utterance with no voiced block, the pitch change with one.
    """
    spectral = feats.spectral.detach().cpu().numpy().astype(np.float64)
    energy = feats.log_energy.detach().cpu().numpy().astype(np.float64)
    f0 = feats.log_f0.detach().cpu().numpy().astype(np.float64)
    if energy.size == 0:
        return np.zeros(2 * spectral.shape[1] + len(SCALAR_NAMES))
    active = energy >= energy.max() - ACTIVE_RANGE
    loud, rows, pitch = energy[active], spectral[active], f0[active]
    voiced = pitch[~np.isnan(pitch)]
    if voiced.size:
        f0_stats = [
            voiced.mean(),
            voiced.std(),
            np.percentile(voiced, 90) - np.percentile(voiced, 10),
            np.abs(np.diff(voiced)).mean() if voiced.size > 1 else 0.0,
        ]
    else:
        f0_stats = [0.0, 0.0, 0.0, 0.0]
    scalars = [
        loud.mean(),
        loud.std(),
        np.percentile(loud, 90),
        np.percentile(loud, 10),
        active.mean(),
        voiced.size / loud.size,
        *f0_stats,
    ]
    return np.concatenate([rows.mean(axis=0), rows.std(axis=0), np.asarray(scalars)])


def utterance_summaries(feats: BlockFeatures, counts: list[int]) -> list[np.ndarray]:
    """:func:`utterance_summary` of every wave whose blocks are stacked in ``feats``
    (``counts[i]`` blocks each, as the tokenizer's ``block_features`` returns them)."""
    return [
        utterance_summary(BlockFeatures(spectral=s, log_energy=e, log_f0=f))
        for s, e, f in zip(
            feats.spectral.split(counts),
            feats.log_energy.split(counts),
            feats.log_f0.split(counts),
            strict=True,
        )
    ]
