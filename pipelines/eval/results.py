"""The outcomes of one ``dpm eval`` mode and what is made of them.

:class:`ModeResult` holds the per-utterance outcomes of a mode over the corpus; :func:`score`
turns it into the mode's JSON block (WA/UA/WF1, expressive and subtle subsets, speed, accuracy
by dialogue position, a UA interval, the top label's ECE with its interval and the mean
confidence) and :func:`compare` into the paired differences between two
modes (:data:`COMPARISONS`). Intervals are 95% percentile bootstraps that resample whole
conversations. :func:`write_predictions` and :func:`write_plots` write the optional per-utterance
Parquet and PNG plots.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dpm_worker.metrics import (
    bootstrap_interval,
    by_position,
    expected_calibration_error,
    group_calibration_bins,
    group_confusions,
    position_bins,
    summarize,
)
from dpm_worker.tables import ErrorRecord
from dpm_worker.utterance import Utterance

# Differences reported with intervals, when both modes ran.
COMPARISONS = (
    ("dpm", "window"),
    ("dpm", "full"),
    ("dpm", "utterance"),
    ("window", "utterance"),
    ("full", "window"),
    ("prior-ema", "window"),
    ("dpm", "prior-ema"),
)


@dataclass
class ModeResult:
    """Per-utterance outcomes of one mode over the corpus (aligned lists)."""

    conversation_id: list[str] = field(default_factory=list)
    utterance_index: list[int] = field(default_factory=list)
    position: list[int] = field(default_factory=list)
    speaker: list[str] = field(default_factory=list)
    gold: list[str | None] = field(default_factory=list)
    pred: list[str] = field(default_factory=list)
    expressive: list[bool | None] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)
    group: list[dict[str, str | None]] = field(default_factory=list)
    seconds: float = 0.0

    def add(
        self,
        utt: Utterance,
        pred: str,
        *,
        position: int,
        probs: np.ndarray | None = None,
        ms: float = 0.0,
        group: dict[str, str | None] | None = None,
    ) -> None:
        """Append one utterance's outcome."""
        self.conversation_id.append(utt.conversation_id)
        self.utterance_index.append(utt.utterance_index)
        self.position.append(position)
        self.speaker.append(utt.speaker)
        self.gold.append(utt.emotion)
        self.pred.append(pred)
        self.expressive.append(utt.expressive)
        if probs is not None:
            self.probs.append(probs)
        self.ms.append(ms)
        self.group.append(group or {})

    def subset(self, keep: list[int]) -> ModeResult:
        """The outcomes of the utterances at ``keep`` (timing scaled to their share)."""
        share = len(keep) / max(1, len(self.pred))
        return ModeResult(
            **{
                name: [getattr(self, name)[i] for i in keep]
                for name in (
                    "conversation_id", "utterance_index", "position", "speaker", "gold",
                    "pred", "expressive", "probs", "ms", "group",
                )
            },
            seconds=self.seconds * share,
        )  # fmt: skip


def _scored(result: ModeResult, subset: str = "all") -> np.ndarray:
    """Indices of utterances with gold labels (and in the expressive/subtle subset)."""
    keep = [
        i
        for i, g in enumerate(result.gold)
        if g is not None and (subset == "all" or result.expressive[i] is (subset == "expressive"))
    ]
    return np.asarray(keep, dtype=np.int64)


def _pick(values: list, idx: np.ndarray) -> list:
    return [values[i] for i in idx]


def score(result: ModeResult, labels: tuple[str, ...], bin_width: int, n_boot: int) -> dict:
    """The JSON block of one mode."""
    idx = _scored(result, "all")
    gold, pred = _pick(result.gold, idx), _pick(result.pred, idx)
    out = summarize(gold, pred, labels)
    _, cms = group_confusions(_pick(result.conversation_id, idx), gold, pred, labels)
    ci = bootstrap_interval(cms, n_boot=n_boot)
    out["ua_ci"] = [ci["lo"], ci["hi"]]
    out.update(calibration_scores(result, idx, labels, n_boot))
    for subset, key in (("expressive", "expressive"), ("subtle", "subtle")):
        sub = _scored(result, subset)
        if len(sub) == 0:
            out[f"{key}_accuracy"], out[f"{key}_ua"] = None, None
            continue
        s = summarize(_pick(result.gold, sub), _pick(result.pred, sub), labels)
        out[f"{key}_accuracy"], out[f"{key}_ua"], out[f"{key}_n"] = s["wa"], s["ua"], s["n"]
    out["utterances_per_second"] = len(result.pred) / result.seconds if result.seconds else None
    out["ms_per_utterance"] = float(np.mean(result.ms)) if result.ms else None
    positions = _pick(result.position, idx)
    bins = position_bins(max(positions, default=0), bin_width)
    rows = by_position(positions, gold, pred, labels, bins)
    all_pos = np.asarray(result.position)
    ms = np.asarray(result.ms)
    for row in rows:
        sel = (all_pos >= row["from"]) & (all_pos < row["to"])
        row["ms_per_utterance"] = float(ms[sel].mean()) if sel.any() else None
    out["by_position"] = rows
    return out


def calibration_scores(
    result: ModeResult, idx: np.ndarray, labels: tuple[str, ...], n_boot: int
) -> dict:
    """``ece`` (10 bins, top label; ``dpm_worker.metrics``), its conversation-bootstrap
    ``ece_ci`` and ``mean_confidence`` of the scored utterances (None without distributions)."""
    if len(result.probs) != len(result.pred) or len(idx) == 0:
        return {"ece": None, "ece_ci": None, "mean_confidence": None}
    probs = np.stack(_pick(result.probs, idx)).astype(np.float64)
    gold = [labels.index(g) for g in _pick(result.gold, idx)]
    bins = group_calibration_bins(_pick(result.conversation_id, idx), probs, gold)
    ci = bootstrap_interval(bins, metric="ece", n_boot=n_boot)
    return {
        "ece": expected_calibration_error(probs, gold),
        "ece_ci": [ci["lo"], ci["hi"]],
        "mean_confidence": float(probs.max(axis=1).mean()),
    }


def compare(a: ModeResult, b: ModeResult, labels: tuple[str, ...], n_boot: int) -> dict:
    """UA and WA differences a - b with paired conversation-bootstrap intervals."""
    out: dict = {}
    for subset, prefix in (("all", ""), ("expressive", "expressive_"), ("subtle", "subtle_")):
        idx = _scored(a, subset)
        if len(idx) == 0:
            continue
        groups, gold = _pick(a.conversation_id, idx), _pick(a.gold, idx)
        _, cms_a = group_confusions(groups, gold, _pick(a.pred, idx), labels)
        _, cms_b = group_confusions(groups, gold, _pick(b.pred, idx), labels)
        for metric in ("ua", "wa"):
            d = bootstrap_interval(cms_a, cms_b, metric=metric, n_boot=n_boot)
            out[f"{prefix}{metric}_diff"] = d["value"]
            out[f"{prefix}{metric}_diff_ci"] = [d["lo"], d["hi"]]
    out["lo"], out["hi"] = out["ua_diff_ci"]
    return out


def score_groups(
    results: dict[str, ModeResult],
    column: str,
    labels: tuple[str, ...],
    bin_width: int,
    n_boot: int,
) -> dict[str, dict]:
    """Per value of a ``--group-by`` column: each mode's block and the mode comparisons,
    computed on that value's utterances alone (intervals resample its conversations)."""
    first = next(iter(results.values()))
    of = [str(g[column]) for g in first.group]
    values = sorted(set(of))
    out: dict[str, dict] = {}
    for value in values:
        keep = [i for i, g in enumerate(of) if g == value]
        sub = {mode: r.subset(keep) for mode, r in results.items()}
        block: dict = {
            "n_conversations": len(set(sub[next(iter(sub))].conversation_id)),
            "modes": {m: score(r, labels, bin_width, n_boot) for m, r in sub.items()},
        }
        block["comparisons"] = {
            f"{a}-{b}": compare(sub[a], sub[b], labels, n_boot)
            for a, b in COMPARISONS
            if a in sub and b in sub and _scored(sub[a]).size
        }
        out[value] = block
    return out


def failure_report(errors: list[ErrorRecord]) -> dict:
    """The ``failed`` block of the JSON: counts by type and by message, and every row."""
    by_conv: dict[str, int] = {}
    for e in errors:
        by_conv[e.conversation_id] = by_conv.get(e.conversation_id, 0) + 1
    return {
        "rows": len(errors),
        "conversations": len(by_conv),
        "by_type": dict(Counter(e.error_type for e in errors).most_common()),
        "by_message": dict(Counter(e.message for e in errors).most_common()),
        "errors": [asdict(e) for e in errors],
    }


def write_predictions(
    results: dict[str, ModeResult],
    labels: tuple[str, ...],
    uri: str,
    errors: Sequence[ErrorRecord] = (),
) -> None:
    """One row per utterance and mode (``--predictions``); a row that failed is there in every
    mode with its ``error_type`` and ``error`` (message) and no prediction."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list] = {
        k: []
        for k in (
            "mode",
            "conversation_id",
            "utterance_index",
            "speaker",
            "gold",
            "pred",
            "expressive",
            "confidence",
            "ms",
            "error_type",
            "error",
        )
    }
    probs: list[np.ndarray] = []
    for mode, r in results.items():
        columns["mode"] += [mode] * len(r.pred)
        columns["conversation_id"] += r.conversation_id
        columns["utterance_index"] += r.utterance_index
        columns["speaker"] += r.speaker
        columns["gold"] += r.gold
        columns["pred"] += r.pred
        columns["expressive"] += r.expressive
        columns["confidence"] += [float(p.max()) for p in r.probs]
        columns["ms"] += r.ms
        columns["error_type"] += [None] * len(r.pred)
        columns["error"] += [None] * len(r.pred)
        probs += r.probs
        for e in errors:
            for name, value in (
                ("mode", mode),
                ("conversation_id", e.conversation_id),
                ("utterance_index", e.utterance_index),
                ("error_type", e.error_type),
                ("error", e.message),
            ):
                columns[name].append(value)
            for name in ("speaker", "gold", "pred", "expressive", "confidence", "ms"):
                columns[name].append(None)
            probs.append(np.full(len(labels), np.nan, dtype=np.float32))
    types = {"error_type": pa.string(), "error": pa.string(), "utterance_index": pa.int32()}
    table = pa.table({k: pa.array(v, type=types.get(k)) for k, v in columns.items()})
    stacked = np.stack(probs) if probs else np.zeros((0, len(labels)), dtype=np.float32)
    for i, name in enumerate(labels):
        table = table.append_column(f"p_{name}", pa.array(stacked[:, i], pa.float32()))
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, uri)


def write_plots(report: dict, labels: tuple[str, ...], folder: str) -> None:
    """Confusion matrices and accuracy by dialogue position, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    modes = list(report["modes"])
    fig, axes = plt.subplots(1, len(modes), figsize=(4 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        cm = np.asarray(report["modes"][mode]["confusion"], dtype=float)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, int(v), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=45)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title(f"{mode}: UA {report['modes'][mode]['ua']:.3f}")
        ax.set_xlabel("predicted")
    axes[0][0].set_ylabel("gold")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in modes:
        rows = report["modes"][mode]["by_position"]
        ax.plot(
            [(r["from"] + r["to"]) / 2 for r in rows],
            [r["ua"] for r in rows],
            marker="o",
            label=mode,
        )
    ax.set_xlabel("dialogue position (utterance)")
    ax.set_ylabel("UA")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "by_position.png", dpi=100)
    plt.close(fig)


def dtype_name(dtype) -> str:
    """``torch.float32`` -> ``float32`` (the JSON's dtype fields)."""
    return str(dtype).removeprefix("torch.")


def json_default(value):
    """``json.dumps`` for the report's tuples and numpy scalars."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
