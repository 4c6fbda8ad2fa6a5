"""The linear references a model is held against: per-utterance features of a labelled
manifest and a class-balanced logistic regression over them.

Features (``FEATURES``):
- ``functionals``: openSMILE's 88 eGeMAPSv02 functionals (the textbook reference);
- ``encoder``: the pretrained speech encoder's final states over the unpadded utterance, mean
  and standard deviation pooled (the linear probe on the same ears the model hears with);
- ``encoder+functionals``: both side by side;
- ``block2``: the encoder's block-2 states (a pinned truncation, its output layer norm applied),
  pooled the same way: what ``tokenizer.summary_layers: [2]`` pools;
- ``block2+prosody``: beside the fast prosody statistics the tokenizer pools
  (``encoder_tokenizer.raw_summary``): the probe on exactly the features such a model's head
  reads, speaker-z'd instead of shrunk.
``speaker_z`` z-normalises each feature over the utterances of the same speaker in the same
conversation (the field's speaker normalisation; a batch job sees all of them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from dpm_worker.audio import SAMPLE_RATE
from dpm_worker.errors import BadInputError
from dpm_worker.training import iter_waveforms
from dpm_worker.utterance import Utterance

FEATURES = ("functionals", "encoder", "encoder+functionals", "block2", "block2+prosody")


def labelled(utterances: Iterable[Utterance], labels: tuple[str, ...]) -> Iterator[Utterance]:
    return (u for u in utterances if u.emotion in labels)


def corpus_features(
    manifest: str, labels: tuple[str, ...], features: str, encoder_name: str = "whisper-base"
) -> tuple[np.ndarray, list[Utterance]]:
    """``[n, d]`` features (``FEATURES``) of every utterance of ``manifest`` labelled with one
    of ``labels``, and those utterances (samples dropped), in manifest order.

    Raises:
        BadInputError: no utterance carries one of ``labels``.
    """
    encoder = None
    bases = features.split("+")
    if "encoder" in bases or "block2" in bases:
        from dpm_worker.speech import SpeechEncoder, encoder_weights

        depth = 2 if "block2" in bases else None
        encoder = SpeechEncoder(encoder_weights(encoder_name), device="auto", depth=depth)
    rows, kept = [], []
    for utt in labelled(iter_waveforms(manifest), labels):
        assert utt.samples is not None  # iter_waveforms decodes every utterance
        rows.append(utterance_features(utt.samples, features, encoder))
        kept.append(dataclasses.replace(utt, samples=None))
    if not kept:
        raise BadInputError(f"no utterances labelled with one of {list(labels)}", manifest)
    return np.stack(rows), kept


def utterance_features(wave: np.ndarray, features: str, encoder) -> np.ndarray:
    """One utterance's feature vector (``corpus_features``)."""
    parts = []
    if encoder is not None:
        (states,) = encoder.states([wave])
        parts += [states.mean(axis=0, dtype=np.float64), states.std(axis=0, dtype=np.float64)]
    bases = features.split("+")
    if "functionals" in bases:
        from dpm_worker.speech.smile import egemaps_functionals

        parts.append(np.asarray(egemaps_functionals(wave, SAMPLE_RATE), dtype=np.float64))
    if "prosody" in bases:
        from dpm_worker.speech.encoder_tokenizer import raw_summary

        parts.append(raw_summary(wave, [], prosody=True))
    return np.concatenate(parts)


def speaker_z(features: np.ndarray, utterances: Sequence[Utterance]) -> np.ndarray:
    """Each row z-normalised over the rows of its (conversation, speaker)."""
    out = np.empty_like(features)
    keys = [(u.conversation_id, u.speaker) for u in utterances]
    for key in set(keys):
        rows = [i for i, k in enumerate(keys) if k == key]
        block = features[rows]
        std = block.std(axis=0)
        out[rows] = (block - block.mean(axis=0)) / np.where(std > 1e-9, std, 1.0)
    return out


def fit_predict(
    train: np.ndarray,
    gold: list[str],
    test: np.ndarray,
    c: float,
    groups: Sequence[str] | None = None,
) -> list[str]:
    """Standardise, fit a class-balanced logistic regression, predict the test rows.

    ``groups`` (one name per training row, e.g. its corpus): every group weighs the same in the
    fit, and within it every class (a corpus with twice the takes does not count twice).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    )
    weights = None
    if groups is not None:
        names = np.asarray(groups)
        weights = np.zeros(len(names))
        for name in set(groups):
            weights[names == name] = 1.0 / np.sum(names == name)
        weights *= len(names) / weights.sum()
    model.fit(np.nan_to_num(train), gold, logisticregression__sample_weight=weights)
    return [str(p) for p in model.predict(np.nan_to_num(test))]
