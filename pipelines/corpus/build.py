"""``dpm manifest``: turn an IEMOCAP or MELD folder into a canonical manifest.

    dpm manifest iemocap ROOT --out manifest.parquet [--sessions 1,2] [--mapping 4class]
    dpm manifest meld ROOT --split train --out manifest.parquet [--mapping 7class|4class|FILE]

ROOT and --out may be local or ``s3://``. The output format follows --out's extension
(.parquet, .jsonl, .csv). The manifest is validated against the mapping's label set before it
is written, and the drop summary (kept/dropped counts by corpus code) is printed; ``--summary
FILE.json`` also writes it as JSON.
"""

from __future__ import annotations

import argparse
import json

from dpm_worker.corpus import (
    load_mapping,
    read_iemocap,
    read_meld,
    validate_manifest,
    write_manifest,
)
from dpm_worker.errors import ConfigError
from dpm_worker.storage import get_filesystem

DEFAULT_MAPPING = {"iemocap": "4class", "meld": "7class"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", choices=sorted(DEFAULT_MAPPING), help="the folder's layout")
    parser.add_argument("root", help="IEMOCAP_full_release/ or MELD.Raw/ folder (local or s3://)")
    parser.add_argument("--out", required=True, help="manifest to write (.parquet/.jsonl/.csv)")
    parser.add_argument(
        "--mapping",
        default=None,
        help="corpus code -> label mapping: a built-in name (iemocap: 4class; meld: 7class, "
        "4class) or a .json/.yaml file; default iemocap 4class, meld 7class",
    )
    parser.add_argument("--sessions", default=None, help="IEMOCAP sessions, e.g. 1,2,3")
    parser.add_argument(
        "--split", default="train", choices=["train", "dev", "test"], help="MELD split"
    )
    parser.add_argument(
        "--audio-dir", default=None, help="MELD: folder of extracted dia*_utt*.wav/.flac"
    )
    parser.add_argument("--summary", default=None, help="also write the drop summary as JSON")
    parser.add_argument("--endpoint-url", default=None, help="S3 endpoint (else from env)")


def _sessions(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        sessions = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--sessions must be comma-separated integers, got {text!r}") from None
    if not sessions or any(n < 1 for n in sessions):
        raise ConfigError(f"--sessions must list session numbers >= 1, got {text!r}")
    return sessions


def run(args: argparse.Namespace) -> int:
    mapping = load_mapping(args.mapping or DEFAULT_MAPPING[args.corpus], args.corpus)
    if args.corpus == "iemocap":
        if args.audio_dir is not None:
            raise ConfigError("--audio-dir applies to meld only")
        table, summary = read_iemocap(
            args.root,
            sessions=_sessions(args.sessions),
            mapping=mapping,
            endpoint_url=args.endpoint_url,
        )
    else:
        if args.sessions is not None:
            raise ConfigError("--sessions applies to iemocap only")
        table, summary = read_meld(
            args.root,
            args.split,
            mapping=mapping,
            audio_dir=args.audio_dir,
            endpoint_url=args.endpoint_url,
        )
    validate_manifest(table, args.out, labels=sorted(set(mapping.values())))
    write_manifest(table, args.out, endpoint_url=args.endpoint_url)
    print(summary.format())
    print(f"wrote {table.num_rows} rows to {args.out}")
    if args.summary:
        fs, path = get_filesystem(args.summary, args.endpoint_url)
        fs.pipe_file(path, (json.dumps(summary.to_dict(), indent=2) + "\n").encode("utf-8"))
    return 0
