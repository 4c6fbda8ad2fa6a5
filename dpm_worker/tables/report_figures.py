"""The figures of a run report, each rendered to PNG bytes (matplotlib, Agg backend).

Every figure uses the same color per label, so a label reads the same across the report.
Functions take the emotion rows as a pandas frame (one row per utterance, ``emotion`` and
``gold_emotion`` as strings) and return PNG bytes; nothing is written to disk.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on workers or in CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from dpm_worker.metrics import position_bins

MAX_CONVERSATIONS_SHOWN = 40  # per-conversation bars beyond this are unreadable
POSITION_BINS = 10


def dialogue_positions(emotions: pd.DataFrame) -> pd.Series:
    """0-based position of each utterance within its conversation, by utterance index."""
    return (
        emotions.groupby("conversation_id")["utterance_index"].rank(method="first").astype(int) - 1
    )


def label_colors(labels: Sequence[str]) -> dict[str, Any]:
    """One fixed color per label, the same in every figure."""
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def figure_png(fig: plt.Figure) -> bytes:
    """Render and close a figure (closing matters: pyplot keeps every open figure alive)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def plot_labels_per_conversation(emotions: pd.DataFrame, labels: Sequence[str]) -> bytes:
    """Left: label counts over the run (predicted, and gold when present). Right: per
    conversation, the fraction of each predicted label (largest conversations first)."""
    colors = label_colors(labels)
    counts = emotions.groupby("conversation_id")["emotion"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=list(labels), fill_value=0)
    sizes = counts.sum(axis=1).sort_values(ascending=False)
    shown = counts.loc[sizes.index[:MAX_CONVERSATIONS_SHOWN]]
    fractions = shown.div(shown.sum(axis=1), axis=0)
    height = max(3.0, 0.28 * len(shown) + 1.5)
    # Constrained layout leaves room for the conversation ids between the two panels.
    fig, (ax_all, ax_conv) = plt.subplots(
        1, 2, figsize=(12, height), gridspec_kw={"width_ratios": [1, 2.4]}, layout="constrained"
    )
    x = np.arange(len(labels))
    predicted = emotions["emotion"].value_counts().reindex(list(labels), fill_value=0)
    has_gold = emotions["gold_emotion"].notna().any()
    width = 0.4 if has_gold else 0.8
    ax_all.bar(
        x - (width / 2 if has_gold else 0),
        predicted.values,
        width,
        label="predicted",
        color=[colors[label] for label in labels],
    )
    if has_gold:
        gold = emotions["gold_emotion"].value_counts().reindex(list(labels), fill_value=0)
        ax_all.bar(
            x + width / 2,
            gold.values,
            width,
            label="gold",
            color="none",
            edgecolor="black",
            hatch="//",
        )
        # Gray swatch for "predicted": its bars carry the label colors, not one color.
        handles = [
            Patch(color="gray", label="predicted (solid)"),
            Patch(facecolor="none", edgecolor="black", hatch="//", label="gold"),
        ]
        ax_all.legend(handles=handles, loc="upper center", ncol=2, fontsize=8)
    ax_all.set_ylim(0, ax_all.get_ylim()[1] * 1.2)  # headroom: the legend never hides a bar
    ax_all.set_xticks(x, list(labels), rotation=30)
    ax_all.set_ylabel("utterances")
    ax_all.set_title(f"all {len(emotions)} utterances")
    left = np.zeros(len(fractions))
    y = np.arange(len(fractions))
    for label in labels:
        ax_conv.barh(y, fractions[label].values, left=left, color=colors[label], label=label)
        left += fractions[label].values
    ax_conv.set_yticks(y, [f"{c} (n={sizes[c]})" for c in fractions.index], fontsize=8)
    ax_conv.invert_yaxis()
    ax_conv.set_xlim(0, 1)
    ax_conv.set_xlabel("fraction of the conversation's utterances")
    more = len(sizes) - len(shown)
    ax_conv.set_title(
        "predicted labels per conversation" + (f" ({more} smaller ones not shown)" if more else "")
    )
    ax_conv.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return figure_png(fig)


def position_bins_for(positions: pd.Series) -> list[tuple[int, int]]:
    """About ``POSITION_BINS`` equal-width bins covering every dialogue position."""
    top = int(positions.max()) if len(positions) else 0
    return position_bins(top, max(1, math.ceil((top + 1) / POSITION_BINS)))


def plot_labels_over_position(emotions: pd.DataFrame, labels: Sequence[str]) -> bytes:
    """Fraction of each predicted label by dialogue position bin, with the bin sizes."""
    colors = label_colors(labels)
    positions = dialogue_positions(emotions)
    bins = position_bins_for(positions)
    names, fractions, sizes = [], [], []
    for lo, hi in bins:
        sel = emotions["emotion"][(positions >= lo) & (positions < hi)]
        names.append(f"{lo}-{hi - 1}" if hi - lo > 1 else str(lo))
        sizes.append(len(sel))
        counts = sel.value_counts().reindex(list(labels), fill_value=0)
        fractions.append(counts.values / max(1, len(sel)))
    stack = np.array(fractions).T
    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(len(bins))
    bottom = np.zeros(len(bins))
    for i, label in enumerate(labels):
        ax.bar(x, stack[i], bottom=bottom, color=colors[label], label=label, width=0.85)
        bottom += stack[i]
    for xi, n in zip(x, sizes, strict=True):
        ax.text(float(xi), 1.01, f"n={n}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, names, rotation=30)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("dialogue position (utterance number within the conversation)")
    ax.set_ylabel("fraction of utterances")
    ax.set_title("predicted labels over the course of the conversations")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return figure_png(fig)


def plot_confidence(emotions: pd.DataFrame, labels: Sequence[str]) -> bytes:
    """Histogram of the top-label probability, stacked by predicted label; with gold labels a
    second panel splits it into correct and wrong predictions (is confidence informative?)."""
    colors = label_colors(labels)
    has_gold = emotions["gold_emotion"].notna().any()
    fig, axes = plt.subplots(
        1, 2 if has_gold else 1, figsize=(12 if has_gold else 7, 4), squeeze=False
    )
    chance = 1.0 / max(1, len(labels))
    edges = np.linspace(chance, 1.0, 21) if chance < 1 else np.linspace(0, 1, 21)
    conf = emotions["confidence"].astype(float)
    ax = axes[0][0]
    ax.hist(
        [conf[emotions["emotion"] == label] for label in labels],
        bins=edges,
        stacked=True,
        color=[colors[label] for label in labels],
        label=list(labels),
    )
    ax.axvline(
        float(conf.mean()),
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"mean {conf.mean():.2f}",
    )
    ax.set_xlabel("confidence (probability of the predicted label)")
    ax.set_ylabel("utterances")
    ax.set_title("confidence by predicted label")
    ax.legend(fontsize=8)
    if has_gold:
        scored = emotions[emotions["gold_emotion"].notna()]
        right = scored["emotion"] == scored["gold_emotion"]
        ax = axes[0][1]
        ax.hist(
            [scored["confidence"][right], scored["confidence"][~right]],
            bins=edges,
            stacked=True,
            color=["tab:green", "tab:red"],
            label=[f"correct ({right.sum()})", f"wrong ({(~right).sum()})"],
        )
        ax.set_xlabel("confidence")
        ax.set_title("confidence of correct vs wrong predictions (gold)")
        ax.legend(fontsize=8)
    return figure_png(fig)


def plot_confusion(confusion: np.ndarray, labels: Sequence[str]) -> bytes:
    """Row-normalized confusion matrix (rows gold, columns predicted) with the counts."""
    totals = confusion.sum(axis=1, keepdims=True)
    normalized = np.divide(confusion, np.maximum(totals, 1))
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2.5, 1.0 * len(labels) + 1.5))
    image = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{confusion[i, j]}\n{normalized[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if normalized[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(len(labels)), list(labels), rotation=30)
    ax.set_yticks(range(len(labels)), list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title("confusion matrix (row-normalized)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return figure_png(fig)


def plot_accuracy_by_position(rows: list[dict]) -> bytes:
    """WA and UA per dialogue position bin, with the number of utterances per bin."""
    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(len(rows))
    ax_n = ax.twinx()
    ax_n.bar(x, [r["n"] for r in rows], color="lightgray", width=0.8, label="utterances")
    ax_n.set_ylabel("utterances in bin")
    ax.set_zorder(ax_n.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot(x, [r["wa"] for r in rows], marker="o", label="WA (accuracy)")
    ax.plot(x, [r["ua"] for r in rows], marker="s", label="UA (mean recall)")
    ax.set_xticks(x, [f"{r['from']}-{r['to'] - 1}" for r in rows], rotation=30)
    ax.set_ylim(0, 1)
    ax.set_xlabel("dialogue position")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy by dialogue position (gold)")
    ax.legend(loc="lower left", fontsize=8)
    return figure_png(fig)
