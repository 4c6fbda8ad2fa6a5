"""``dpm eval``: label a gold-labelled manifest in-process (no Ray) and report metrics per mode.

Each conversation is read and tokenized once; every requested mode then labels the same tokens,
so the modes differ only in the labeling loop (a fair comparison). Modes are DESIGN section 5's
``utterance``, ``window``, ``full`` and ``dpm``.

Output JSON (accuracies are fractions)::

    {"model": ID, "modes": {MODE: {"n", "wa", "ua", "wf1", "per_class", "expressive_accuracy",
     "subtle_accuracy", "utterances_per_second", "by_position": [{"from", "to", "ua",
     "ms_per_utterance", ...}], "ua_ci": [lo, hi], ...}},
     "comparisons": {"dpm-window": {"ua_diff", "lo", "hi", "subtle_ua_diff", ...}, ...}}

Intervals are 95% percentile bootstraps that resample whole conversations.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dpm_worker.errors import BadInputError, ConfigError
from dpm_worker.labeling import (
    MODES,
    ConversationLabeler,
    LabelingConfig,
    UtteranceInput,
)
from dpm_worker.memory import MemoryConfig
from dpm_worker.metrics import (
    bootstrap_interval,
    by_position,
    group_confusions,
    position_bins,
    summarize,
)

log = logging.getLogger(__name__)

# Differences reported with intervals, when both modes ran.
COMPARISONS = (
    ("dpm", "window"),
    ("dpm", "full"),
    ("dpm", "utterance"),
    ("window", "utterance"),
    ("full", "window"),
)


@dataclass
class Conversation:
    """One conversation's tokens and gold labels, shared by every mode."""

    conversation_id: str
    inputs: list[UtteranceInput]
    gold: list[str | None]
    expressive: list[bool | None]


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
    seconds: float = 0.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="manifest file or folder with gold labels")
    parser.add_argument(
        "--mode", default="utterance,window,full,dpm", help="comma-separated modes (%(default)s)"
    )
    parser.add_argument(
        "--model", default=None, help="model folder or s3:// URI (default: packaged)"
    )
    parser.add_argument("--window-tokens", type=int, default=256, help="n_r (%(default)s)")
    parser.add_argument("--json", required=True, help="where to write the metrics JSON")
    parser.add_argument("--predictions", default=None, help="per-utterance Parquet output")
    parser.add_argument("--plots", default=None, help="folder for PNG plots")
    parser.add_argument("--limit-conversations", type=int, default=None, help="first K only")
    parser.add_argument(
        "--history-labels",
        choices=("none", "predicted"),
        default=None,
        help="history format (default: the model's own)",
    )
    parser.add_argument("--position-bin", type=int, default=10, help="bin width (utterances)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (%(default)s)")
    add_memory_arguments(parser)


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """``--memory-*`` flags; their defaults are MemoryConfig's."""
    d = MemoryConfig()
    group = parser.add_argument_group("DPM memory (dpm mode)")
    group.add_argument("--memory-rank", type=int, default=d.rank)
    group.add_argument("--memory-alpha", type=float, default=d.alpha)
    group.add_argument("--memory-lr", type=float, default=d.lr)
    group.add_argument("--memory-steps", type=int, default=d.steps_per_utterance)
    group.add_argument("--memory-weight-decay", type=float, default=d.weight_decay)
    group.add_argument("--memory-warmup", type=int, default=d.warmup_steps)
    group.add_argument("--memory-scope", choices=("conversation", "speaker"), default=d.scope)
    group.add_argument(
        "--memory-write-target",
        choices=("audio", "audio+emotion", "audio+prediction"),
        default=d.write_target,
    )
    group.add_argument("--memory-target-modules", default=",".join(d.target_modules))
    group.add_argument("--memory-seed", type=int, default=d.seed)
    group.add_argument("--memory-emotion-weight", type=float, default=d.emotion_weight)
    group.add_argument("--memory-confidence-gate", type=float, default=d.confidence_gate)
    group.add_argument("--memory-read-gate", type=float, default=d.read_gate)


def memory_config(args: argparse.Namespace) -> MemoryConfig:
    return MemoryConfig(
        rank=args.memory_rank,
        alpha=args.memory_alpha,
        lr=args.memory_lr,
        steps_per_utterance=args.memory_steps,
        weight_decay=args.memory_weight_decay,
        warmup_steps=args.memory_warmup,
        scope=args.memory_scope,
        write_target=args.memory_write_target,
        target_modules=tuple(m for m in args.memory_target_modules.split(",") if m),
        seed=args.memory_seed,
        emotion_weight=args.memory_emotion_weight,
        confidence_gate=args.memory_confidence_gate,
        read_gate=args.memory_read_gate,
    )


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise ConfigError(f"--mode must list modes from {MODES}, got {text!r}")
    return list(dict.fromkeys(modes))


def load_conversations(corpus: str, model, limit: int | None = None) -> list[Conversation]:
    """Read the manifest, cut each conversation's audio and tokenize it once."""
    from dpm_worker.manifest import read_manifest, to_rows
    from dpm_worker.segments import conversation_segments

    table = read_manifest(corpus, labels=model.vocab.labels)
    by_conv: dict[str, list] = {}
    for row in to_rows(table):
        by_conv.setdefault(row.conversation_id, []).append(row)
    ids = list(by_conv)[: limit if limit is not None else None]
    out = []
    for cid in ids:
        rows = by_conv[cid]
        expressive = {r.utterance_index: r.extra.get("expressive") for r in rows}
        segments = conversation_segments(rows)
        inputs, gold, expr = [], [], []
        for seg in segments:
            codes = np.asarray(model.speech_tokenizer.encode(seg.samples), dtype=np.int64)
            model.check_fits(len(codes) + 2, seg.audio_uri)
            inputs.append(UtteranceInput(seg.utterance_index, seg.speaker, codes))
            gold.append(seg.emotion)
            value = expressive.get(seg.utterance_index)
            expr.append(None if value is None else bool(value))
        out.append(Conversation(cid, inputs, gold, expr))
    if not any(g is not None for c in out for g in c.gold):
        raise BadInputError("the corpus has no gold emotion labels to evaluate against", corpus)
    return out


def label_corpus(model, conversations: list[Conversation], config: LabelingConfig) -> ModeResult:
    """Label every conversation with one configuration."""
    labeler = ConversationLabeler(model, config)
    result = ModeResult()
    try:
        for conv in conversations:
            start = time.perf_counter()
            preds = labeler.label_conversation(conv.inputs)
            result.seconds += time.perf_counter() - start
            for pos, (pred, gold, expr) in enumerate(
                zip(preds, conv.gold, conv.expressive, strict=True)
            ):
                result.conversation_id.append(conv.conversation_id)
                result.utterance_index.append(pred.utterance_index)
                result.position.append(pos)
                result.speaker.append(pred.speaker)
                result.gold.append(gold)
                result.pred.append(pred.label)
                result.expressive.append(expr)
                result.probs.append(pred.probs)
                result.ms.append(pred.ms)
    finally:
        labeler.close()
    return result


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
    for subset, key in (("expressive", "expressive"), ("subtle", "subtle")):
        sub = _scored(result, subset)
        if len(sub) == 0:
            out[f"{key}_accuracy"], out[f"{key}_ua"] = None, None
            continue
        s = summarize(_pick(result.gold, sub), _pick(result.pred, sub), labels)
        out[f"{key}_accuracy"], out[f"{key}_ua"], out[f"{key}_n"] = s["wa"], s["ua"], s["n"]
    out["utterances_per_second"] = len(result.pred) / result.seconds if result.seconds else None
    out["ms_per_utterance"] = float(np.mean(result.ms)) if result.ms else None
    positions = np.asarray(_pick(result.position, idx))
    bins = position_bins(int(positions.max()) if len(positions) else 0, bin_width)
    rows = by_position(positions, gold, pred, labels, bins)
    all_pos = np.asarray(result.position)
    ms = np.asarray(result.ms)
    for row in rows:
        sel = (all_pos >= row["from"]) & (all_pos < row["to"])
        row["ms_per_utterance"] = float(ms[sel].mean()) if sel.any() else None
    out["by_position"] = rows
    return out


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


def write_predictions(results: dict[str, ModeResult], labels: tuple[str, ...], uri: str) -> None:
    """One row per utterance and mode (``--predictions``)."""
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
        probs += r.probs
    table = pa.table(columns)
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


def build_report(model, results: dict[str, ModeResult], args: argparse.Namespace) -> dict:
    labels = model.vocab.labels
    report = {
        "model": model.model_id,
        "fingerprint": model.fingerprint,
        "corpus": args.corpus,
        "n_conversations": len(set(next(iter(results.values())).conversation_id)),
        "window_tokens": args.window_tokens,
        "memory": {k: v for k, v in vars(memory_config(args)).items()},
        "modes": {
            m: score(r, labels, args.position_bin, args.bootstrap) for m, r in results.items()
        },
        "comparisons": {
            f"{a}-{b}": compare(results[a], results[b], labels, args.bootstrap)
            for a, b in COMPARISONS
            if a in results and b in results
        },
    }
    return report


def run(args: argparse.Namespace) -> int:
    import torch

    from dpm_worker.backbone import load_model

    modes = parse_modes(args.mode)
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.limit_conversations is not None and args.limit_conversations < 1:
        raise ConfigError(f"--limit-conversations must be >= 1, got {args.limit_conversations}")
    memory = memory_config(args)
    configs = {
        m: LabelingConfig(
            mode=m,
            window_tokens=args.window_tokens,
            history_labels=args.history_labels,
            memory=memory,
        )
        for m in modes
    }
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    start = time.perf_counter()
    conversations = load_conversations(args.corpus, model, args.limit_conversations)
    n_utt = sum(len(c.inputs) for c in conversations)
    log.info(
        "eval: %d conversations, %d utterances tokenized in %.1f s",
        len(conversations),
        n_utt,
        time.perf_counter() - start,
    )
    results = {}
    for mode, config in configs.items():
        results[mode] = label_corpus(model, conversations, config)
        log.info("eval: %s done in %.1f s", mode, results[mode].seconds)
    report = build_report(model, results, args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    if args.predictions:
        write_predictions(results, model.vocab.labels, args.predictions)
    if args.plots:
        write_plots(report, model.vocab.labels, args.plots)
    for mode, block in report["modes"].items():
        print(
            f"{mode:10s} n={block['n']} WA={block['wa']:.3f} UA={block['ua']:.3f} "
            f"WF1={block['wf1']:.3f} subtle={block['subtle_accuracy']} "
            f"utt/s={block['utterances_per_second']:.1f}"
        )
    for name, c in report["comparisons"].items():
        print(f"{name:18s} dUA={c['ua_diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]")
    return 0


def _json_default(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
