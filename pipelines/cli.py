"""The ``dpm`` command line: one subcommand per pipeline, each in its own module.

Each pipeline module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and is imported
only when its subcommand runs, so ``dpm --help`` stays fast and a missing optional dependency
of one pipeline never breaks another.

Exit codes: 0 success; 2 bad arguments or configuration (before any work); 3 finished with
some conversations in the errors table; 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from dpm_worker.errors import BadInputError, ConfigError, DpmError
from pipelines.exit_codes import EXIT_FAILED, EXIT_USAGE

# subcommand -> (module, one-line help). Order is the order shown in --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("pipelines.corpus.synth", "generate the synthetic conversational emotion corpus"),
    "manifest": (
        "pipelines.corpus.build",
        "turn an IEMOCAP/MELD/RAVDESS/EMOVO/TurEV-DB folder or a CSV of labelled files into a "
        "manifest",
    ),
    "augment": (
        "pipelines.corpus.augment",
        "augmented copies of a labelled corpus for training (new voices through new lines)",
    ),
    "train": ("pipelines.train.backbone", "train the emotion speech-LLM backbone"),
    "head": (
        "pipelines.train.acoustic_head",
        "fit a model's acoustic head (prosody statistics read beside the LLM) into a new folder",
    ),
    "eval": (
        "pipelines.eval.evaluate",
        "label a gold-labelled manifest in-process and report metrics",
    ),
    "calibrate": (
        "pipelines.eval.calibrate",
        "fit a model's temperature on labelled speech and save a calibrated copy",
    ),
    "label": ("pipelines.label_corpus", "the Ray job: label a corpus into Parquet emotion tables"),
    "diarize": (
        "pipelines.diarize",
        "who speaks when in mono recordings: RTTM files (speakers spk0, spk1, ...)",
    ),
    "merge": (
        "pipelines.corpus.merge",
        "join several manifests into one (ids tagged so they cannot collide)",
    ),
    "compact": ("pipelines.label.compact", "merge a run's per-conversation files into large ones"),
    "report": ("pipelines.label.report", "render an HTML report of a labeling run"),
    "bench": (
        "pipelines.bench.command",
        "benchmarks that print JSON (synth, memory, throughput, scale, startup, faults)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpm",
        description="Emotion labeling of long conversations with Dynamic Parameter Memory.",
        epilog="Run 'dpm COMMAND --help' for a command's options. "
        "Exit codes: 0 ok, 1 failure, 2 bad arguments/config, 3 finished with error rows.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse only the top level here; the subcommand's module builds its own parser.
    top, rest = parser.parse_known_args(argv)
    if top.command is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if top.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    module_name, help_text = SUBCOMMANDS[top.command]
    module = importlib.import_module(module_name)
    sub_parser = argparse.ArgumentParser(prog=f"dpm {top.command}", description=help_text)
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(rest)
    try:
        return int(module.run(args))
    except (ConfigError, BadInputError) as exc:
        print(f"dpm {top.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DpmError as exc:
        print(f"dpm {top.command}: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
