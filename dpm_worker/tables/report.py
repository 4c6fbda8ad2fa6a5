"""A self-contained HTML report of one labeling run: figures as base64 PNGs, tables, counts.

What an operator or analyst wants to see after a run: how the labels are distributed per
conversation and along the dialogue (a model stuck on one label shows up at once), how
confident the model is, and, when the corpus has gold labels, the confusion matrix and the
accuracy by dialogue position (where DPM should help: late in long conversations), and the
ECE of the confidence. A run out of its depth (label collapse, low confidence; ``run_checks``)
is flagged in a warnings section at the top. The figures are drawn in ``report_figures``.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from dpm_worker.metrics import by_position, expected_calibration_error, summarize
from dpm_worker.tables.report_figures import (
    dialogue_positions,
    plot_accuracy_by_position,
    plot_confidence,
    plot_confusion,
    plot_labels_over_position,
    plot_labels_per_conversation,
    position_bins_for,
)
from dpm_worker.tables.run_checks import RunChecks, RunWarning, run_warnings
from dpm_worker.tables.run_results import RunResults
from dpm_worker.tables.schema import probability_column

MAX_ERROR_ROWS_SHOWN = 20
# Always there (gold: when the run has gold labels); "warnings" comes first when a check fires.
SECTIONS = (
    "summary",
    "labels-per-conversation",
    "labels-over-position",
    "confidence",
    "gold",
    "errors",
)


def gold_metrics(emotions: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any] | None:
    """WA/UA/WF1, confusion matrix and accuracy by position over rows with an in-set gold label."""
    scored = emotions[emotions["gold_emotion"].isin(list(labels))]
    if scored.empty:
        return None
    gold, pred = scored["gold_emotion"].tolist(), scored["emotion"].astype(str).tolist()
    out = summarize(gold, pred, labels)
    positions = dialogue_positions(emotions)[scored.index]
    out["by_position"] = by_position(
        positions.tolist(), gold, pred, labels, position_bins_for(positions)
    )
    out["excluded"] = int(emotions["gold_emotion"].notna().sum() - len(scored))
    columns = [probability_column(label) for label in labels]
    if all(c in scored for c in columns):
        probs = scored[columns].to_numpy(dtype=np.float64)
        gold_index = [list(labels).index(g) for g in gold]
        out["ece"] = expected_calibration_error(probs, gold_index)
    return out


def report_warnings(results: RunResults) -> list[RunWarning]:
    """The run checks on all of the run's emotion rows, with the thresholds the run was
    configured with (``config.checks`` of ``run.json``; the defaults when it has none)."""
    emotions = results.emotions
    if not len(emotions):
        return []
    configured = (results.run_record.get("config") or {}).get("checks") or {}
    try:
        checks = RunChecks(**configured)
    except (TypeError, ValueError):
        checks = RunChecks()
    counts = emotions["emotion"].astype(str).value_counts().to_dict()
    return run_warnings(counts, float(emotions["confidence"].sum()), checks)


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;font-size:.9em} th{background:#f4f4f4} img{max-width:100%}
.note{color:#666;font-size:.9em} pre{background:#f7f7f7;padding:.6em;overflow-x:auto}
.warn{background:#fff4e5;border-left:4px solid #e67e00;padding:.6em 1.6em}
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
    success = results.success or {}
    session = success.get("this_session", {})
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
    try:
        wall_s = (
            dt.datetime.fromisoformat(success["finished_at"])
            - dt.datetime.fromisoformat(success["started_at"])
        ).total_seconds()
    except (KeyError, TypeError, ValueError):
        wall_s = None
    if wall_s and wall_s > 0:
        rows.append(("wall time (last session)", f"{wall_s:.1f} s"))
        if session.get("audio_hours"):
            rate = float(session["audio_hours"]) / (wall_s / 3600)
            rows.append(("throughput (last session)", f"{rate:.2f} audio hours per hour"))
    if session.get("stage_seconds"):
        # Summed over actors, so they can exceed the wall time; the split is what matters.
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in session["stage_seconds"].items())
        rows.append(("time by stage, summed over actors (last session)", stages))
    return rows


def render_html(results: RunResults) -> str:
    """The whole report as one HTML string (no external files or network references)."""
    labels, emotions = results.labels, results.emotions
    parts = []
    warnings = report_warnings(results)
    if warnings:
        items = "".join(f"<li>{html.escape(w.message)}</li>" for w in warnings)
        parts.append(
            _section(
                "warnings",
                "Warnings: this run may be out of its depth",
                f'<ul class="warn">{items}</ul>',
            )
        )
    parts.append(_section("summary", "Summary", _table(summary_rows(results), ("", ""))))
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
                (
                    "ECE of the confidence (10 bins, top label)",
                    f"{metrics['ece']:.3f}" if "ece" in metrics else "-",
                ),
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
