"""``dpm manifest``: turn a real corpus folder (or a CSV of labelled files) into a manifest.

    dpm manifest iemocap ROOT --out manifest.parquet [--sessions 1,2] [--mapping 4class]
    dpm manifest meld ROOT --split train --out manifest.parquet [--mapping 7class|4class|FILE]
    dpm manifest ravdess ROOT --out manifest.parquet [--actors 19-24] [--mapping 4class|8class]
        [--order shuffled|inertia] [--seed S]
    dpm manifest emovo ROOT --out manifest.parquet [--speakers f1,m2] [--order ...] [--seed S]
    dpm manifest turev ROOT --out manifest.parquet [--speakers 1157,1234] [--order ...] [--seed S]
    dpm manifest labels FILE.csv --out manifest.parquet [--mapping FILE]
    dpm manifest files ROOT --out manifest.parquet

``ravdess``, ``emovo``, ``turev``: acted corpora, one conversation per speaker in a seeded
order (``dpm_worker.corpus.acted``); a ``corpus`` column names the corpus of each row. EMOVO's
stereo files are read from channel 0 (two microphones on one voice, never two speakers).
TurEV-DB is CC BY-NC-ND: validation only, never training data for shipped weights.

``files``: every file under ROOT (recursive, sorted) is one conversation to segment: stereo
channels are speakers, a mono recording one unknown speaker cut into turns, a sidecar
``NAME.rttm`` its diarization (``dpm_worker.corpus.recordings``). It is the manifest that
``dpm label --input ROOT`` makes itself when ROOT has no manifest.parquet; write it to edit it
(drop files, name speakers, add gold emotions) and pass it as ``--input``.

ROOT and --out may be local or ``s3://``. The output format follows --out's extension
(.parquet, .jsonl, .csv). The manifest is validated against the mapping's label set before it
is written, and the drop summary (kept/dropped counts by corpus code) is printed; ``--summary
FILE.json`` also writes it as JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from typing import Any

from dpm_worker.audio import clip_duration
from dpm_worker.corpus import (
    EMOVO_SPEAKERS,
    ORDERS,
    TUREV_SPEAKERS,
    is_audio_name,
    load_mapping,
    parse_actors,
    parse_speakers,
    read_emovo,
    read_iemocap,
    read_labelled,
    read_meld,
    read_ravdess,
    read_turev,
    recordings_manifest,
    validate_manifest,
    write_manifest,
)
from dpm_worker.corpus.layouts import DropSummary
from dpm_worker.errors import ConfigError
from dpm_worker.storage import get_filesystem

DEFAULT_MAPPING = {
    "iemocap": "4class",
    "meld": "7class",
    "ravdess": "4class",
    "emovo": "4class",
    "turev": "4class",
    "labels": None,
}
ACTED: dict[str, Callable[..., tuple[Any, DropSummary]]] = {
    "ravdess": read_ravdess,
    "emovo": read_emovo,
    "turev": read_turev,
}
SPEAKERS = {"emovo": EMOVO_SPEAKERS, "turev": TUREV_SPEAKERS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "corpus",
        choices=[*sorted(DEFAULT_MAPPING), "files"],
        help="the folder's layout; labels: a CSV with columns file, speaker, emotion "
        "[, conversation] (files relative to the CSV; one conversation per speaker by default); "
        "files: any folder of recordings, one conversation per file",
    )
    parser.add_argument(
        "root",
        help="IEMOCAP_full_release/, MELD.Raw/, audio_speech_actors_01-24/, EMOVO/ or "
        "TurEV-DB's 'Sound Source/' folder, the labels CSV, or a folder of recordings "
        "(local or s3://)",
    )
    parser.add_argument("--out", required=True, help="manifest to write (.parquet/.jsonl/.csv)")
    parser.add_argument(
        "--mapping",
        default=None,
        help="corpus code -> label mapping: a built-in name (iemocap: 4class; meld: 7class, "
        "4class; ravdess: 4class, 8class; emovo, turev: 4class) or a .json/.yaml file; "
        "default iemocap 4class, meld 7class, ravdess 4class (neutral+calm, happy, sad, "
        "angry), emovo 4class (neu gio tri rab), turev 4class (calm -> neutral), labels as "
        "written",
    )
    parser.add_argument("--actors", default=None, help="RAVDESS actors, e.g. 1-18 or 19-24")
    parser.add_argument(
        "--speakers",
        default=None,
        help=f"EMOVO speakers (of {','.join(EMOVO_SPEAKERS)}) or TurEV-DB speakers (of "
        f"{','.join(TUREV_SPEAKERS)}), comma-separated; default all",
    )
    parser.add_argument(
        "--order",
        default="shuffled",
        choices=ORDERS,
        help="RAVDESS/EMOVO/TurEV-DB dialogue order of each speaker's files: shuffled (a seeded "
        "permutation) or inertia (a seeded Markov chain over emotions that stays with "
        "probability 0.7)",
    )
    parser.add_argument("--seed", type=int, default=0, help="RAVDESS/EMOVO/TurEV-DB: the order")
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
    if args.corpus == "files":
        return _files(args)
    only = {
        "sessions": ("iemocap",),
        "audio_dir": ("meld",),
        "actors": ("ravdess",),
        "speakers": ("emovo", "turev"),
    }
    for option, corpora in only.items():
        if getattr(args, option) is not None and args.corpus not in corpora:
            raise ConfigError(f"--{option.replace('_', '-')} applies to {'/'.join(corpora)} only")
    spec = args.mapping or DEFAULT_MAPPING[args.corpus]
    if spec is None:  # labels without --mapping: the CSV's emotions as they are
        table, summary = read_labelled(args.root, endpoint_url=args.endpoint_url)
        return _write(args, table, summary, sorted(set(table.column("emotion").to_pylist())))
    mapping = load_mapping(spec, args.corpus)
    if args.corpus == "labels":
        table, summary = read_labelled(args.root, mapping=mapping, endpoint_url=args.endpoint_url)
        return _write(args, table, summary, sorted(set(mapping.values())))
    if args.corpus in ACTED:
        chosen = (
            {"actors": parse_actors(args.actors)}
            if args.corpus == "ravdess"
            else {"speakers": parse_speakers(args.speakers, SPEAKERS[args.corpus])}
        )
        table, summary = ACTED[args.corpus](
            args.root,
            **chosen,
            mapping=mapping,
            order=args.order,
            seed=args.seed,
            endpoint_url=args.endpoint_url,
        )
    elif args.corpus == "iemocap":
        table, summary = read_iemocap(
            args.root,
            sessions=_sessions(args.sessions),
            mapping=mapping,
            endpoint_url=args.endpoint_url,
        )
    else:
        table, summary = read_meld(
            args.root,
            args.split,
            probe=functools.partial(clip_duration, endpoint_url=args.endpoint_url),
            mapping=mapping,
            audio_dir=args.audio_dir,
            endpoint_url=args.endpoint_url,
        )
    return _write(args, table, summary, sorted(set(mapping.values())))


def _write(args: argparse.Namespace, table: Any, summary: DropSummary, labels: list[str]) -> int:
    validate_manifest(table, args.out, labels=labels)
    write_manifest(table, args.out, endpoint_url=args.endpoint_url)
    print(summary.format())
    print(f"wrote {table.num_rows} rows to {args.out}")
    if args.summary:
        fs, path = get_filesystem(args.summary, args.endpoint_url)
        fs.pipe_file(path, (json.dumps(summary.to_dict(), indent=2) + "\n").encode("utf-8"))
    return 0


def _files(args: argparse.Namespace) -> int:
    for flag in ("mapping", "sessions", "audio_dir", "actors", "speakers", "summary"):
        if getattr(args, flag) is not None:
            raise ConfigError(f"--{flag.replace('_', '-')} does not apply to files")
    fs, root = get_filesystem(args.root, args.endpoint_url)
    table = recordings_manifest(fs, root)
    validate_manifest(table, args.out)
    write_manifest(table, args.out, endpoint_url=args.endpoint_url)
    uris = table.column("audio_uri").to_pylist()
    other = [u for u in uris if not is_audio_name(u)]
    with_rttm = sum(u is not None for u in table.column("rttm_uri").to_pylist())
    print(
        f"wrote {table.num_rows} conversations (one per file; {with_rttm} with an RTTM "
        f"sidecar) to {args.out}"
    )
    if other:
        print(
            f"{len(other)} file(s) without an audio extension (they become error rows if "
            f"they do not decode), e.g. {other[0]}"
        )
    return 0
