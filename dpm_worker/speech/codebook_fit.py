"""Fitting the built-in product codebook on training waveforms (``dpm train`` does it once)."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import torch

from dpm_worker.errors import ConfigError
from dpm_worker.speech.encoder_tokenizer import EncoderTokenizer, EncoderTokenizerConfig
from dpm_worker.speech.encoder_weights import encoder_weights
from dpm_worker.speech.features import BlockFeatures, block_count, compute_block_features
from dpm_worker.speech.smile import smile_block_features
from dpm_worker.speech.speaker_levels import ConversationLevels, SpeakerLevels, relative_features
from dpm_worker.speech.tokenizer import BuiltinSpeechTokenizer
from dpm_worker.speech.tokenizer_config import SpeechTokenizerConfig


def fit_speech_tokenizer(
    waves: Iterable[np.ndarray],
    config: SpeechTokenizerConfig | None = None,
    *,
    seed: int = 0,
    max_blocks: int = 200_000,
    speakers: Iterable[Hashable] | None = None,
) -> BuiltinSpeechTokenizer:
    """Fit the product codebook on training waveforms with MiniBatchKMeans.

    Args:
        waves: float32 mono waveforms at ``config.sample_rate`` (the training split only), in
            dialogue order within each conversation.
        config: the codebook's shape.
        seed: seeds k-means and the block subsample, so the same data gives the same codebook.
        max_blocks: at most this many blocks (uniformly subsampled) are clustered.
        speakers: one key per waveform naming its speaker in its conversation (for example
            ``(conversation_id, speaker)``); required when ``config.speaker_relative``.

    Raises:
        ConfigError: too little audio, or a speaker-relative codebook without ``speakers``.
    """
    from sklearn.cluster import MiniBatchKMeans

    config = config or SpeechTokenizerConfig()
    if config.speaker_relative and speakers is None:
        raise ConfigError("a speaker-relative codebook is fitted with one speaker key per wave")
    pairs: Iterable[tuple[np.ndarray, Hashable]] = (
        zip(waves, speakers, strict=True) if speakers is not None else ((w, None) for w in waves)
    )
    # with the conversation reference, every wave's levels are counted before any is coded; the
    # keys name a speaker in a conversation, so one set of levels serves the whole corpus
    whole = config.speaker_relative and config.speaker_reference == "conversation"
    shift = config.spectral_relative
    running = SpeakerLevels(spectral=shift)
    conversation = ConversationLevels(spectral=shift)
    every: list[tuple[BlockFeatures, Hashable]] = []
    for wave, key in pairs:
        feats = frame_features(np.asarray(wave, dtype=np.float32), config)
        if whole:
            conversation.add(key, feats)
        elif config.speaker_relative:
            reference = running.update(key, feats)
            feats = relative_features(
                feats, reference, running.spectral_reference(key) if shift else None
            )
        every.append((feats, key))
    spectral, energy, pitch = [], [], []
    for feats, key in every:
        if whole:
            reference = conversation.update(key, feats)
            feats = relative_features(
                feats, reference, conversation.spectral_reference(key) if shift else None
            )
        spectral.append(feats.spectral.numpy())
        energy.append(feats.log_energy.numpy())
        pitch.append(feats.log_f0.numpy())
    if not spectral:
        raise ConfigError("cannot fit a speech tokenizer on zero waveforms")
    spec = np.concatenate(spectral)
    ener = np.concatenate(energy)
    f0 = np.concatenate(pitch)
    rng = np.random.default_rng(seed)
    if len(spec) > max_blocks:
        keep = rng.choice(len(spec), size=max_blocks, replace=False)
        spec, ener, f0 = spec[keep], ener[keep], f0[keep]
    voiced_f0 = f0[~np.isnan(f0)]
    if len(spec) < config.n_spectral or len(voiced_f0) < config.n_pitch - 1:
        raise ConfigError(
            f"too little audio to fit {config.vocab_size} codes: {len(spec)} blocks, "
            f"{len(voiced_f0)} voiced"
        )

    def kmeans(data: np.ndarray, k: int) -> np.ndarray:
        model = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=3)
        return model.fit(data).cluster_centers_.astype(np.float32)

    norm = None
    if config.features != "mel":
        # eGeMAPS descriptors come in unlike units (Hz, dB, ratios): standardise each one
        centre, scale = spec.mean(axis=0), spec.std(axis=0)
        scale = np.where(scale > 1e-6, scale, 1.0)
        spec = (spec - centre) / scale
        norm = torch.from_numpy(np.stack([centre, scale]).astype(np.float32))
    return BuiltinSpeechTokenizer(
        config,
        torch.from_numpy(kmeans(spec, config.n_spectral)),
        torch.from_numpy(kmeans(ener[:, None], config.n_energy)[:, 0]),
        torch.from_numpy(kmeans(voiced_f0[:, None], config.n_pitch - 1)[:, 0]),
        spectral_norm=norm,
    )


def frame_features(wave: np.ndarray, config: SpeechTokenizerConfig) -> BlockFeatures:
    """One waveform's block features from the config's front end, padded to whole blocks as
    the tokenizer pads it."""
    if config.features == "mel":
        return compute_block_features(
            torch.as_tensor(wave),
            sample_rate=config.sample_rate,
            rate_hz=config.rate_hz,
            n_mels=config.n_mels,
        )
    block = int(round(config.sample_rate / config.rate_hz))
    padded = np.pad(wave, (0, block_count(wave.size, block) * block - wave.size))
    return smile_block_features(padded, config.sample_rate, config.rate_hz)


def fit_encoder_tokenizer(
    waves: Iterable[np.ndarray],
    config: EncoderTokenizerConfig | None = None,
    *,
    speakers: Iterable[Hashable],
    seed: int = 0,
    max_frames: int = 200_000,
) -> EncoderTokenizer:
    """Fit the encoder tokenizer's units and references on training waveforms.

    The unit frames are standardised by their mean and spread over the training frames and
    clustered with MiniBatchKMeans into ``config.n_units``. The summary reference is the corpus
    mean of the raw summaries and the mean *within-speaker* variance (what one speaker's
    utterances spread by, the right prior for a speaker seen only a few times).

    Args:
        waves: float32 mono 16 kHz training waveforms.
        config: the tokenizer's shape.
        speakers: one key per wave naming its speaker (e.g. ``(conversation_id, speaker)``).
        seed: seeds k-means and the frame subsample.
        max_frames: at most this many unit frames (uniformly subsampled) are clustered.

    Raises:
        ConfigError: fewer frames than units.
    """
    from sklearn.cluster import MiniBatchKMeans

    config = config or EncoderTokenizerConfig()
    width = encoder_weights(config.encoder).width
    # an unfitted tokenizer with unit frame norms: its block_features give the raw material
    blank = EncoderTokenizer(
        config,
        torch.zeros(config.n_units, width),
        torch.stack([torch.zeros(width), torch.ones(width)]),
        torch.zeros(2, config.summary_dim(width)),
    )
    frames, summaries, keys = [], [], []
    for wave, key in zip(waves, speakers, strict=True):
        feats, _ = blank.block_features([np.asarray(wave, dtype=np.float32)])
        frames.append(feats.frames[0])
        summaries.append(feats.summaries[0])
        keys.append(key)
    every = np.concatenate(frames).astype(np.float64)
    if len(every) < config.n_units:
        raise ConfigError(f"{len(every)} unit frames cannot fit {config.n_units} units")
    mean, std = every.mean(axis=0), every.std(axis=0) + 1e-6
    rng = np.random.default_rng(seed)
    pick = (
        every
        if len(every) <= max_frames
        else every[rng.choice(len(every), max_frames, replace=False)]
    )
    kmeans = MiniBatchKMeans(
        n_clusters=config.n_units, random_state=seed, batch_size=4096, n_init=3
    ).fit((pick - mean) / std)
    return EncoderTokenizer(
        config,
        torch.from_numpy(kmeans.cluster_centers_).float(),
        torch.from_numpy(np.stack([mean, std])).float(),
        _summary_norm(summaries, keys),
        encoder=blank.encoder,
    )


def refit_summary(
    tokenizer: EncoderTokenizer,
    waves: Sequence[np.ndarray],
    speakers: Sequence[Hashable],
    summary_layers: Sequence[int],
) -> EncoderTokenizer:
    """``tokenizer`` with its summary read from other encoder blocks, units unchanged.

    The units (the LLM's audio vocabulary) keep their centroids and frame norms, so a trained
    backbone reads the same tokens; only the acoustic head's input changes, and with it the
    speakers' shrinkage target, fitted on ``waves`` as :func:`fit_encoder_tokenizer` fits it.
    """
    config = dataclasses.replace(tokenizer.config, summary_layers=tuple(summary_layers))
    width = encoder_weights(config.encoder).width
    blank = EncoderTokenizer(
        config,
        tokenizer.centroids,
        tokenizer.frame_norm,
        torch.zeros(2, config.summary_dim(width)),
    )
    summaries = [
        blank.block_features([np.asarray(wave, dtype=np.float32)])[0].summaries[0] for wave in waves
    ]
    return EncoderTokenizer(
        config,
        tokenizer.centroids,
        tokenizer.frame_norm,
        _summary_norm(summaries, list(speakers)),
        encoder=blank.encoder,
    )


def _summary_norm(summaries: Sequence[np.ndarray], keys: Sequence[Hashable]) -> torch.Tensor:
    """``[2, D]``: the raw summaries' mean and mean within-speaker variance (the right prior
    for a speaker seen only a few times)."""
    table = np.stack(summaries)
    by_speaker: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        by_speaker.setdefault(key, []).append(i)
    spreads = [table[rows].var(axis=0) for rows in by_speaker.values() if len(rows) > 1]
    within = np.mean(spreads, axis=0) if spreads else table.var(axis=0)
    return torch.from_numpy(np.stack([table.mean(axis=0), within + 1e-12]))
