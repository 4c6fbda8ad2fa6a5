"""``dpm eval``: label a gold-labelled manifest in-process (no Ray) and report metrics per mode.

Each conversation is read and tokenized once; every requested mode then labels the same tokens,
so the modes differ only in the labeling loop (a fair comparison). Modes are DESIGN section 5's
``utterance``, ``window``, ``full`` and ``dpm``.

Output JSON (accuracies are fractions)::

    {"model": ID, "modes": {MODE: {"n", "wa", "ua", "wf1", "ece", "ece_ci": [lo, hi],
     "mean_confidence", "per_class", "expressive_accuracy",
     "subtle_accuracy", "utterances_per_second", "by_position": [{"from", "to", "ua",
     "ms_per_utterance", ...}], "ua_ci": [lo, hi], ...}},
     "comparisons": {"dpm-window": {"ua_diff", "lo", "hi", "subtle_ua_diff", ...}, ...}}

Intervals are 95% percentile bootstraps that resample whole conversations. This module is the
command line; reading and labeling are ``pipelines.eval.corpus``, the scores, comparisons,
predictions and plots ``pipelines.eval.results``.

Bad input is isolated exactly as ``dpm label`` isolates it (``dpm_worker.worker.error_rows``): a row
that fails alone (a silent, truncated or non-audio clip) is left out, a conversation whose
input fails as a whole loses all its rows, and the rest is scored. The JSON then has
``"failed": {"rows", "conversations", "by_type", "by_message", "errors": [...]}``, the
``--predictions`` file has those rows with ``error_type`` and ``error``, and the exit code is 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from dpm_worker.errors import ConfigError
from dpm_worker.memory import HISTORY_CACHES, MEMORY_DTYPE, MODES, LabelingConfig
from dpm_worker.model import DTYPES, HISTORY_FORMATS
from dpm_worker.tables import ErrorRecord
from pipelines.eval.config import add_labeling_arguments, load_labeling_config
from pipelines.eval.corpus import label_conversations, load_corpus
from pipelines.eval.results import (
    COMPARISONS,
    ModeResult,
    compare,
    dtype_name,
    failure_report,
    json_default,
    score,
    score_groups,
    write_plots,
    write_predictions,
)
from pipelines.exit_codes import EXIT_OK, EXIT_PARTIAL

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="manifest file or folder with gold labels")
    parser.add_argument(
        "--mode",
        default="utterance,window,full,dpm",
        help="comma-separated modes (%(default)s); each replaces labeling.mode of --config",
    )
    parser.add_argument(
        "--model", default=None, help="model folder or s3:// URI (default: packaged)"
    )
    parser.add_argument(
        "--verify-weights",
        action="store_true",
        help="re-hash every model file in full (default: sizes, edge hashes, stored fingerprint)",
    )
    parser.add_argument("--window-tokens", type=int, help="n_r (default: labeling.window_tokens)")
    parser.add_argument(
        "--json",
        required=True,
        help="where to write the metrics JSON (rows that failed, as dpm label isolates them, "
        "under 'failed'; the exit code is then 3)",
    )
    parser.add_argument(
        "--predictions",
        default=None,
        help="per-utterance Parquet output (failed rows too, with error_type and error)",
    )
    parser.add_argument("--plots", default=None, help="folder for PNG plots")
    parser.add_argument("--limit-conversations", type=int, default=None, help="first K only")
    parser.add_argument(
        "--history-labels",
        choices=HISTORY_FORMATS,
        default=None,
        help="history format (default: the model's own)",
    )
    parser.add_argument("--position-bin", type=int, default=10, help="bin width (utterances)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (%(default)s)")
    parser.add_argument(
        "--group-by",
        default=None,
        help="comma-separated manifest columns (e.g. engine,voice_family,cue_mix): metrics per "
        "value of each",
    )
    parser.add_argument(
        "--slots",
        type=int,
        default=8,
        help="conversations labeled at once, every utterance step batched across them "
        "(%(default)s: the choice of `dpm bench throughput --slots 1,8`, as for `dpm label`'s "
        "slots_per_actor: about 3x the utterances per second of one at a time on a 2-core "
        "CPU, docs/dpm.md 'Throughput'; a conversation's rows do not depend on it, within "
        "1e-5)",
    )
    parser.add_argument(
        "--history-cache",
        choices=HISTORY_CACHES,
        default=None,
        help="sets labeling.history_cache: reuse each conversation's history keys and values "
        "(default: the config's, recompute)",
    )
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default=None,
        help="backbone dtype (default: bfloat16 on CUDA, else float32); the memory stays float32",
    )
    add_labeling_arguments(parser)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def group_columns(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--group-by`` columns (none when the flag is absent)."""
    text = args.group_by or ""
    return tuple(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise ConfigError(f"--mode must list modes from {MODES}, got {text!r}")
    return list(dict.fromkeys(modes))


def build_report(
    model,
    results: dict[str, ModeResult],
    args: argparse.Namespace,
    labeling: LabelingConfig,
    errors: list[ErrorRecord] = (),  # type: ignore[assignment]
) -> dict:
    labels = model.vocab.labels
    report = {
        "model": model.model_id,
        "fingerprint": model.fingerprint,
        "corpus": args.corpus,
        "n_conversations": len(set(next(iter(results.values())).conversation_id)),
        "window_tokens": labeling.window_tokens,
        "dtype": dtype_name(next(model.model.parameters()).dtype),
        "memory_dtype": dtype_name(MEMORY_DTYPE),
        "slots": args.slots,
        "history_cache": labeling.history_cache,
        "memory": dataclasses.asdict(labeling.memory),
        "failed": failure_report(list(errors)),
        "modes": {
            m: score(r, labels, args.position_bin, args.bootstrap) for m, r in results.items()
        },
        "comparisons": {
            f"{a}-{b}": compare(results[a], results[b], labels, args.bootstrap)
            for a, b in COMPARISONS
            if a in results and b in results
        },
    }
    columns = group_columns(args)
    if columns:
        report["groups"] = {
            c: score_groups(results, c, labels, args.position_bin, args.bootstrap) for c in columns
        }
    return report


def run(args: argparse.Namespace) -> int:
    import torch

    from dpm_worker.model import load_model

    labeling = load_labeling_config(
        args,
        {
            "labeling.window_tokens": args.window_tokens,
            "labeling.history_labels": args.history_labels,
            "labeling.history_cache": args.history_cache,
        },
    )
    modes = parse_modes(args.mode)
    if args.slots < 1:
        raise ConfigError(f"--slots must be >= 1, got {args.slots}")
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.limit_conversations is not None and args.limit_conversations < 1:
        raise ConfigError(f"--limit-conversations must be >= 1, got {args.limit_conversations}")
    configs = {m: dataclasses.replace(labeling, mode=m) for m in modes}
    torch.set_num_threads(args.threads)
    model = load_model(args.model, dtype=args.dtype, verify_weights=args.verify_weights)
    start = time.perf_counter()
    conversations, errors = load_corpus(
        args.corpus, model, args.limit_conversations, group_columns(args)
    )
    n_utt = sum(len(c.utterances) for c in conversations)
    log.info(
        "eval: %d conversations, %d utterances tokenized in %.1f s; %d rows failed",
        len(conversations),
        n_utt,
        time.perf_counter() - start,
        len(errors),
    )
    results = {}
    for mode, config in configs.items():
        results[mode] = label_conversations(model, conversations, config, args.slots)
        log.info("eval: %s done in %.1f s", mode, results[mode].seconds)
    report = build_report(model, results, args, labeling, errors)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2, default=json_default) + "\n")
    if args.predictions:
        write_predictions(results, model.vocab.labels, args.predictions, errors)
    if args.plots:
        write_plots(report, model.vocab.labels, args.plots)
    for mode, block in report["modes"].items():
        print(
            f"{mode:10s} n={block['n']} WA={block['wa']:.3f} UA={block['ua']:.3f} "
            f"WF1={block['wf1']:.3f} ECE={_fmt(block['ece'])} subtle={block['subtle_accuracy']} "
            f"utt/s={block['utterances_per_second']:.1f}"
        )
    for name, c in report["comparisons"].items():
        print(f"{name:18s} dUA={c['ua_diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]")
    for column, values in report.get("groups", {}).items():
        for value, group in values.items():
            cells = " ".join(
                f"{m}: UA={b['ua']:.3f} expr={b['expressive_accuracy']}"
                for m, b in group["modes"].items()
            )
            print(f"{column}={value} ({group['n_conversations']} conv) {cells}")
    if errors:
        failed = report["failed"]
        print(f"failed: {failed['rows']} rows of {failed['conversations']} conversations")
        for message, count in failed["by_message"].items():
            print(f"  {count:5d}  {message}")
        return EXIT_PARTIAL
    return EXIT_OK
