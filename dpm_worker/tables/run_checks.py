"""When a labeling run is out of its depth, it says so: checks on a run's labels and confidence.

A model that does not hear the speech it is given (another language, corpus, channel or
speaking style than it was trained on) rarely fails loudly: it reads one label for almost
everything, or it is unsure of everything (measured with dpm-default-v9: every neutral and sad
take of an unseen German corpus read as angry). Two rules catch that from the run's own output,
without gold labels:

- label collapse: one label takes at least ``label_share`` of the run's utterances;
- low confidence: the mean ``confidence`` is below ``mean_confidence`` (this one needs a
  calibrated model, ``dpm calibrate``: an overconfident one is sure of its wrong labels too).

Runs with fewer than ``min_utterances`` utterances are too small to tell and never warn. The
warnings go into ``dpm label``'s final summary, the run's ``_SUCCESS`` record and the HTML
report; docs/operations.md "When a run warns" says what to do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from dpm_worker.errors import ConfigError

WHAT_TO_DO = (
    "check that the speech is what the model was trained on (language, corpus, channel); "
    "score a labelled sample of it with `dpm manifest labels` + `dpm eval`, and calibrate on it "
    "with `dpm calibrate` (docs/operations.md 'When a run warns')"
)


@dataclass(frozen=True)
class RunChecks:
    """Thresholds of the run checks (module docstring).

    Args:
        label_share: a label with at least this share of the utterances is a collapse (0.6
            with the default model's 4 labels, where an even split is 0.25; 1.0 warns only
            when every utterance has one label).
        mean_confidence: a mean confidence below this is low (0: never).
        min_utterances: runs with fewer utterances never warn.
    """

    label_share: float = 0.6
    mean_confidence: float = 0.5
    min_utterances: int = 20

    def __post_init__(self) -> None:
        if not (math.isfinite(self.label_share) and 0 < self.label_share <= 1):
            raise ConfigError(f"checks.label_share must be in (0, 1], got {self.label_share!r}")
        if not (math.isfinite(self.mean_confidence) and 0 <= self.mean_confidence <= 1):
            raise ConfigError(
                f"checks.mean_confidence must be in [0, 1], got {self.mean_confidence!r}"
            )
        if self.min_utterances < 1:
            raise ConfigError(f"checks.min_utterances must be >= 1, got {self.min_utterances!r}")


@dataclass(frozen=True)
class RunWarning:
    """One rule that fired: which (``label_collapse``, ``low_confidence``), the figure that
    fired it, the threshold, and a message that names both and what to do."""

    kind: str
    figure: float
    threshold: float
    message: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def run_warnings(
    label_counts: Mapping[str, int], confidence_sum: float, checks: RunChecks | None = None
) -> list[RunWarning]:
    """The warnings of a run whose utterances have these label counts and confidence sum.

    Args:
        label_counts: utterances per emitted label.
        confidence_sum: the sum of the utterances' ``confidence``.
        checks: the thresholds (None: the defaults).
    """
    checks = checks or RunChecks()
    n = int(sum(label_counts.values()))
    if n < checks.min_utterances:
        return []
    out = []
    label, count = max(sorted(label_counts.items()), key=lambda kv: kv[1])
    share = count / n
    if share >= checks.label_share:
        out.append(
            RunWarning(
                "label_collapse",
                share,
                checks.label_share,
                f"label collapse: {label!r} is {share:.0%} of the run's {n} utterances "
                f"(warns at {checks.label_share:.0%}); the model may not hear this speech: "
                + WHAT_TO_DO,
            )
        )
    mean = confidence_sum / n
    if mean < checks.mean_confidence:
        out.append(
            RunWarning(
                "low_confidence",
                mean,
                checks.mean_confidence,
                f"low confidence: the mean confidence of the run's {n} utterances is {mean:.3f} "
                f"(warns below {checks.mean_confidence:.3f}); the labels are little better "
                "than guesses: " + WHAT_TO_DO,
            )
        )
    return out
