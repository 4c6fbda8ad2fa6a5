"""The acoustic head: a linear reader of each utterance's acoustic summary, fused with the
speech-LLM's read.

Why: the speech codes keep less of what an utterance's prosody says than pooled statistics of
the same features do (``dpm_worker/speech/summary.py``). The head is a multinomial logistic
regression on the standardised summary; the model's emotion distribution for an utterance is

    p ∝ p_llm × p_head ** weight

where ``p_llm`` is the read of the labeling mode and ``weight`` was chosen on validation
speakers when the head was fitted (``dpm head``). The DPM step fuses it into every read
(``dpm_worker.memory.step``): so the ``prior`` memory learns the speaker's fused reads and
``prior-ema`` averages them, and the memory carries what the whole model heard.

Files in a model folder: ``acoustic_head.safetensors`` (``mean``, ``scale``, ``coef``,
``intercept``, float64) and ``acoustic_head.json`` (labels, weight, summary names, how it was
fitted); both are covered by the folder's manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dpm_worker.errors import ConfigError, ModelError

HEAD_CONFIG = "acoustic_head.json"
HEAD_WEIGHTS = "acoustic_head.safetensors"


@dataclass(frozen=True)
class AcousticHead:
    """A fitted head (module docstring).

    Args:
        labels: the emotion labels, in the model's order.
        mean: ``[D]`` the summary's training mean.
        scale: ``[D]`` its training standard deviation (1 where it was 0).
        coef: ``[n_labels, D]`` logistic-regression weights on the standardised summary.
        intercept: ``[n_labels]``.
        weight: the exponent of the head's distribution in the fusion (0: the head is off).
        info: how it was fitted (data, validation scores), kept in ``acoustic_head.json``.
    """

    labels: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    weight: float
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        dim = self.mean.shape[0]
        if self.scale.shape != (dim,) or self.coef.shape != (len(self.labels), dim):
            raise ConfigError(
                f"acoustic head shapes do not agree: mean {self.mean.shape}, scale "
                f"{self.scale.shape}, coef {self.coef.shape} for {len(self.labels)} labels"
            )
        if self.intercept.shape != (len(self.labels),):
            raise ConfigError(f"intercept must have shape ({len(self.labels)},)")
        if not self.weight >= 0:
            raise ConfigError(f"acoustic head weight must be >= 0, got {self.weight}")

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def log_probs(self, summaries: np.ndarray) -> np.ndarray:
        """``[N, D]`` summaries -> ``[N, n_labels]`` float64 log-probabilities.

        Raises:
            ConfigError: the summaries are not ``D`` long (a tokenizer of another shape).
        """
        x = np.atleast_2d(np.asarray(summaries, dtype=np.float64))
        if x.shape[1] != self.dim:
            raise ConfigError(
                f"acoustic summary has {x.shape[1]} values, the head reads {self.dim}"
            )
        z = (x - self.mean) / self.scale @ self.coef.T + self.intercept
        z -= z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def save(self, folder: str | Path) -> list[Path]:
        """Write the head's two files into ``folder``; return their paths."""
        folder = Path(folder)
        weights = folder / HEAD_WEIGHTS
        tensors = {
            name: torch.from_numpy(np.ascontiguousarray(getattr(self, name), dtype=np.float64))
            for name in ("mean", "scale", "coef", "intercept")
        }
        save_file(tensors, str(weights))
        config = folder / HEAD_CONFIG
        body = {"labels": list(self.labels), "weight": self.weight, "dim": self.dim, **self.info}
        config.write_text(json.dumps(body, indent=2) + "\n")
        return [config, weights]


def load_acoustic_head(folder: str | Path) -> AcousticHead | None:
    """The head of a model folder, or None when it has none.

    Raises:
        ModelError: one of its two files without the other, or files that do not agree.
    """
    folder = Path(folder)
    config, weights = folder / HEAD_CONFIG, folder / HEAD_WEIGHTS
    if not config.exists() and not weights.exists():
        return None
    if not (config.exists() and weights.exists()):
        raise ModelError(f"acoustic head needs both {HEAD_CONFIG} and {HEAD_WEIGHTS}", str(folder))
    try:
        body = json.loads(config.read_text())
        tensors = {k: v.numpy() for k, v in load_file(str(weights)).items()}
        info = {k: v for k, v in body.items() if k not in ("labels", "weight", "dim")}
        return AcousticHead(
            labels=tuple(body["labels"]),
            mean=tensors["mean"],
            scale=tensors["scale"],
            coef=tensors["coef"],
            intercept=tensors["intercept"],
            weight=float(body["weight"]),
            info=info,
        )
    except (json.JSONDecodeError, KeyError, ConfigError) as exc:
        raise ModelError(f"acoustic head is invalid: {exc}", str(folder)) from exc


def fit_acoustic_head(
    summaries: np.ndarray,
    emotions: list[str],
    labels: tuple[str, ...],
    *,
    c: float = 0.5,
    weight: float = 1.0,
    sample_weight: np.ndarray | None = None,
    info: dict[str, Any] | None = None,
) -> AcousticHead:
    """A class-balanced logistic regression (L2, ``c``) on standardised ``summaries``.

    ``sample_weight`` (default: all alike) weighs the rows, in the standardisation too; the
    classes are then balanced so that each carries the same total weight.

    Raises:
        ConfigError: an emotion outside ``labels``, a label with no weighed example, or
            weights that are not finite and >= 0.
    """
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(summaries, dtype=np.float64)
    unknown = sorted(set(emotions) - set(labels))
    if unknown:
        raise ConfigError(f"emotions {unknown} are not among the model's labels {labels}")
    y = np.array([labels.index(e) for e in emotions])
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    if w.shape != y.shape or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ConfigError("sample weights must be one finite number >= 0 per summary")
    per_class = np.bincount(y, weights=w, minlength=len(labels))
    missing = [label for label, total in zip(labels, per_class, strict=True) if total <= 0]
    if missing:
        raise ConfigError(f"no training example of {missing}")
    w = w * (w.sum() / (len(labels) * per_class))[y]  # every class the same total
    mean = np.average(x, axis=0, weights=w)
    scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w))
    scale[scale == 0] = 1.0
    clf = LogisticRegression(C=c, max_iter=5000)
    # weights summing to the rows that count: a row at weight 0 changes nothing, not even the
    # regularisation's strength against the data
    clf.fit((x - mean) / scale, y, sample_weight=w * (np.count_nonzero(w) / w.sum()))
    return AcousticHead(
        labels=tuple(labels),
        mean=mean,
        scale=scale,
        coef=clf.coef_.astype(np.float64),
        intercept=clf.intercept_.astype(np.float64),
        weight=weight,
        info=dict(info or {}),
    )
