"""``dpm report``: render one labeling run as a self-contained HTML report.

    dpm report OUT --run-id RUN_ID --out report.html     a run under the output prefix OUT
    dpm report OUT/_runs/RUN_ID --out report.html        the same, naming the run's records
    dpm report OUT --out report.html                     the run that committed last

OUT may be a local folder or ``s3://bucket/prefix``. The HTML embeds its figures (PNG, base64):
label distribution per conversation and over the dialogue, a confidence histogram, and with
gold labels the confusion matrix and accuracy by dialogue position; plus the errors table's
counts. It can be mailed or attached to a ticket as one file.
"""

from __future__ import annotations

import argparse
import os

from dpm_worker.errors import ConfigError, StorageError
from dpm_worker.storage import get_filesystem, is_remote, redact
from dpm_worker.tables import (
    latest_committed_run,
    read_run,
    render_html,
    split_run_uri,
    validate_run_id,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_URI_OR_OUTPUT", help="output prefix or OUT/_runs/ID")
    parser.add_argument("--run-id", help="the run to report (default: from the URI, else latest)")
    parser.add_argument("--out", default="report.html", help="HTML file to write (or s3://...)")


def run(args: argparse.Namespace) -> int:
    """Read the run's tables and write the report; returns the exit code."""
    output_uri, run_from_uri = split_run_uri(args.run)
    if args.run_id and run_from_uri and args.run_id != run_from_uri:
        raise ConfigError(f"--run-id {args.run_id!r} contradicts the run URI {args.run!r}")
    if not is_remote(output_uri):
        output_uri = os.path.abspath(output_uri)
    run_id = args.run_id or run_from_uri or latest_committed_run(output_uri)
    validate_run_id(run_id)
    results = read_run(output_uri, run_id)
    document = render_html(results)
    fs, path = get_filesystem(args.out)
    try:
        if not is_remote(args.out):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fs.pipe_file(path, document.encode("utf-8"))
    except OSError as exc:
        raise StorageError(f"cannot write the report to {redact(args.out)}: {exc}") from exc
    print(
        f"dpm report: run {run_id}: {len(results.emotions)} emotion rows, "
        f"{len(results.errors)} error rows -> {args.out}",
        flush=True,
    )
    return 0
