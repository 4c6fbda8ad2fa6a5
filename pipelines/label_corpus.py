"""``dpm label``: the Ray job that labels a corpus into Parquet emotion tables (DESIGN 7-8).

Runs the same way as ``dpm label ARGS``, ``python -m pipelines.label_corpus ARGS`` and
``ray job submit --working-dir . -- python -m pipelines.label_corpus ARGS``. Without
``--address`` it starts an embedded local Ray; with it, it joins that cluster.

Steps: validate the config, the manifest's columns, the model folder and that the output can
be written (exit 2 on any problem, before any work); start one actor per GPU (or per
``cpus_per_actor`` CPUs); stream the uncommitted conversations to them; write the run's
conversation fingerprints and ``_SUCCESS``. With ``--incremental`` only conversations whose
fingerprint (manifest rows + recording size/ETag or mtime) differs from the latest committed
run with the same model and labeling config are scheduled; when nothing is left to label, no
actor is started.

Exit codes: 0 every conversation labeled; 3 finished with some conversations in the errors
table; 2 bad arguments, config, manifest, model or output location; 1 anything else
(including conversations the job gave up on after actor deaths; re-run with the same
``--run-id`` to finish them). The last line printed says which.

This module is the command line; the checks before any work are ``pipelines.label.plan``
(``prepare``), the run on the cluster is ``pipelines.label.job`` (``LabelJob``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dpm_worker.errors import BadInputError, ConfigError, StorageError
from pipelines.config import add_config_arguments
from pipelines.exit_codes import EXIT_USAGE
from pipelines.label import finish, load_config, prepare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        help="manifest URI (Parquet/JSONL/CSV, or a folder holding manifest.parquet), or a "
        "folder / s3:// prefix of recordings without one: one conversation per file, stereo "
        "channels as speakers, a sidecar NAME.rttm as diarization (dpm manifest files)",
    )
    parser.add_argument("--output", help="output prefix for the tables (folder or s3://...)")
    parser.add_argument("--model", help="model folder or s3:// URI (default: packaged model)")
    parser.add_argument(
        "--verify-weights",
        action="store_true",
        default=None,
        help="actors re-hash every model file in full at start (default: sizes, edge hashes "
        "and the stored fingerprint)",
    )
    parser.add_argument(
        "--mode",
        choices=("utterance", "window", "full", "dpm"),
        help="labeling mode (default: dpm)",
    )
    parser.add_argument("--run-id", help="run id; re-using one resumes that run")
    parser.add_argument(
        "--incremental",
        action="store_true",
        default=None,
        help="label only conversations new or changed since the last committed run of the "
        "same model and config (default run id: nightly-<UTC time>)",
    )
    parser.add_argument("--address", help="Ray cluster address (default: embedded local Ray)")
    parser.add_argument("--actors", type=int, help="labeling actors (default: per GPU/CPU)")
    parser.add_argument("--gpus-per-actor", type=float, help="GPUs per actor (GPU clusters)")
    parser.add_argument("--cpus-per-actor", type=float, help="CPUs per actor (may be < 1)")
    parser.add_argument(
        "--slots-per-actor",
        type=int,
        metavar="P",
        help="conversations each actor labels at once, every utterance step batched across "
        "them (default 8, the benchmark's choice; same rows within 1e-5; 1 = one at a time)",
    )
    parser.add_argument(
        "--metrics",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export Prometheus metrics through Ray's metrics agent, prefixed ray_dpm_ "
        "(default: on; docs/operations.md lists them; --no-metrics records none)",
    )
    add_config_arguments(
        parser,
        {
            "the job's fields": "input, output, actors, slots_per_actor, in_flight_per_actor, ...",
            "labeling": "mode, window_tokens, history_labels, seed",
            "labeling.memory": "the DPM memory: lr, optimizer, rank, write_target, ...",
        },
        "labeling.memory.lr=5e-4 in_flight_per_actor=3",
    )


def run(args: argparse.Namespace) -> int:
    """Validate everything, then label; returns the exit code (and prints the summary line)."""
    try:
        config = load_config(
            args.config,
            {
                "input": args.input,
                "output": args.output,
                "model": args.model,
                "verify_weights": args.verify_weights,
                "labeling.mode": args.mode,
                "run_id": args.run_id,
                "incremental": args.incremental,
                "address": args.address,
                "actors": args.actors,
                "gpus_per_actor": args.gpus_per_actor,
                "cpus_per_actor": args.cpus_per_actor,
                "slots_per_actor": args.slots_per_actor,
                "metrics": args.metrics,
            },
            args.overrides,
        )
        job = prepare(config)
    except (ConfigError, BadInputError, StorageError) as exc:
        return finish(EXIT_USAGE, f"bad arguments, config or input, nothing done: {exc}")
    return job.execute()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.label_corpus``: the same code path as ``dpm label``."""
    from pipelines.cli import main as cli_main

    return cli_main(["label", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
