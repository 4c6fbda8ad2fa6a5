"""A self-contained HTML report of one labeling run: figures as base64 PNGs, tables, counts.

What an operator or analyst wants to see after a run: how the labels are distributed per
conversation and along the dialogue (a model stuck on one label shows up at once), how
confident the model is, and, when the corpus has gold labels, the confusion matrix and the
accuracy by dialogue position (where DPM should help: late in long conversations).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on workers or in CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dpm_worker.metrics import by_position, position_bins, summarize  # noqa: E402
from dpm_worker.run_results import RunResults  # noqa: E402

MAX_CONVERSATIONS_SHOWN = 40  # per-conversation bars beyond this are unreadable
MAX_ERROR_ROWS_SHOWN = 20
POSITION_BINS = 10
SECTIONS = (
    "summary",
    "labels-per-conversation",
    "labels-over-position",
    "confidence",
    "gold",
    "errors",
)


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
    fig, (ax_all, ax_conv) = plt.subplots(
        1, 2, figsize=(12, height), gridspec_kw={"width_ratios": [1, 2.4]}
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
        ax_all.legend()
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


def _bins(positions: pd.Series) -> list[tuple[int, int]]:
    top = int(positions.max()) if len(positions) else 0
    return position_bins(top, max(1, math.ceil((top + 1) / POSITION_BINS)))


def plot_labels_over_position(emotions: pd.DataFrame, labels: Sequence[str]) -> bytes:
    """Fraction of each predicted label by dialogue position bin, with the bin sizes."""
    colors = label_colors(labels)
    positions = dialogue_positions(emotions)
    bins = _bins(positions)
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
        ax.text(xi, 1.01, f"n={n}", ha="center", va="bottom", fontsize=7)
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


def gold_metrics(emotions: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any] | None:
    """WA/UA/WF1, confusion matrix and accuracy by position over rows with an in-set gold label."""
    scored = emotions[emotions["gold_emotion"].isin(list(labels))]
    if scored.empty:
        return None
    gold, pred = scored["gold_emotion"].tolist(), scored["emotion"].astype(str).tolist()
    out = summarize(gold, pred, labels)
    positions = dialogue_positions(emotions)[scored.index]
    out["by_position"] = by_position(positions.tolist(), gold, pred, labels, _bins(positions))
    out["excluded"] = int(emotions["gold_emotion"].notna().sum() - len(scored))
    return out


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;font-size:.9em} th{background:#f4f4f4} img{max-width:100%}
.note{color:#666;font-size:.9em} pre{background:#f7f7f7;padding:.6em;overflow-x:auto}
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{html.escape(title)}</h2>{body}</section>'


def summary_rows(results: RunResults) -> list[tuple[str, Any]]:
    """The key figures of a run, for the report's first table."""
    emotions, errors = results.emotions, results.errors
    hours = float((emotions["end_s"] - emotions["start_s"]).sum()) / 3600 if len(emotions) else 0
    session = (results.success or {}).get("this_session", {})
    rows: list[tuple[str, Any]] = [
        ("run id", results.run_id),
        ("run date", results.run_record.get("run_date", "?")),
        ("committed (_SUCCESS)", "yes" if results.success else "NO: partial or still running"),
        (
            "model",
            f"{results.run_record.get('model_id', '?')} "
            f"({str(results.run_record.get('model_fingerprint', '?'))[:12]})",
        ),
        ("mode", results.run_record.get("mode", "?")),
        ("labels", ", ".join(results.labels)),
        ("conversations labeled", emotions["conversation_id"].nunique()),
        ("utterances labeled", len(emotions)),
        ("audio hours labeled", f"{hours:.3f}"),
        ("mean confidence", f"{emotions['confidence'].mean():.3f}" if len(emotions) else "-"),
        ("conversations in the errors table", errors["conversation_id"].nunique()),
        ("error rows", len(errors)),
    ]
    if session.get("stage_seconds"):
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in session["stage_seconds"].items())
        rows.append(("time by stage (last session)", stages))
    return rows


def render_html(results: RunResults) -> str:
    """The whole report as one HTML string (no external files or network references)."""
    labels, emotions = results.labels, results.emotions
    parts = [_section("summary", "Summary", _table(summary_rows(results), ("", "")))]
    if len(emotions):
        parts.append(
            _section(
                "labels-per-conversation",
                "Label distribution per conversation",
                _img(
                    plot_labels_per_conversation(emotions, labels),
                    "label distribution per conversation",
                ),
            )
        )
        parts.append(
            _section(
                "labels-over-position",
                "Label distribution over time",
                _img(
                    plot_labels_over_position(emotions, labels),
                    "label distribution over dialogue position",
                ),
            )
        )
        parts.append(
            _section(
                "confidence",
                "Confidence",
                _img(plot_confidence(emotions, labels), "confidence histogram"),
            )
        )
    else:
        parts.append('<p class="note">No emotion rows in this run.</p>')
    metrics = gold_metrics(emotions, labels) if results.has_gold else None
    if metrics:
        scores = _table(
            [
                ("utterances with a gold label", metrics["n"]),
                ("WA (accuracy)", f"{metrics['wa']:.3f}"),
                ("UA (mean per-class recall)", f"{metrics['ua']:.3f}"),
                ("weighted F1", f"{metrics['wf1']:.3f}"),
                ("gold labels outside the label set (not scored)", metrics["excluded"]),
            ],
            ("metric", "value"),
        )
        parts.append(
            _section(
                "gold",
                "Against the gold labels",
                scores
                + _img(plot_confusion(np.array(metrics["confusion"]), labels), "confusion matrix")
                + _img(
                    plot_accuracy_by_position(metrics["by_position"]),
                    "accuracy by dialogue position",
                ),
            )
        )
    parts.append(_section("errors", "Errors", _errors_html(results.errors)))
    if results.success:
        record = html.escape(json.dumps(results.success, indent=2, default=str))
        parts.append(f"<details><summary>_SUCCESS record</summary><pre>{record}</pre></details>")
    title = f"dpm run {results.run_id}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="note">output: {html.escape(results.output_uri)}</p>'
        + "".join(parts)
        + "</body></html>"
    )


def _errors_html(errors: pd.DataFrame) -> str:
    if errors.empty:
        return "<p>No conversation failed.</p>"
    by_type = errors.groupby("error_type").agg(
        rows=("conversation_id", "size"), conversations=("conversation_id", "nunique")
    )
    counts = _table(
        [(t, int(r.rows), int(r.conversations)) for t, r in by_type.iterrows()],
        ("error type", "rows", "conversations"),
    )
    sample = errors.head(MAX_ERROR_ROWS_SHOWN)
    rows = [
        (
            r.conversation_id,
            "" if pd.isna(r.utterance_index) else int(r.utterance_index),
            r.error_type,
            r.message,
            r.input_uri or "",
        )
        for r in sample.itertuples()
    ]
    listing = _table(rows, ("conversation", "utterance", "type", "message", "input"))
    more = len(errors) - len(sample)
    note = f'<p class="note">{more} more rows in the errors table.</p>' if more > 0 else ""
    return counts + listing + note
