"""A user's own labelled speech: a CSV of files with speaker and emotion, to a canonical manifest.

``FILE.csv`` has a header with the columns ``file``, ``speaker``, ``emotion`` and optionally
``conversation``; every other column is kept as an extra string column. ``file`` is a path or
URI, relative to the CSV's folder when it is not absolute. Each file is one utterance. Without a
``conversation`` column, each speaker's files form one conversation; dialogue order is the
order of the CSV's rows within each conversation.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from dpm_worker.corpus.layouts import DropSummary, examples, manifest_table, read_text
from dpm_worker.errors import BadInputError
from dpm_worker.storage import get_filesystem, is_remote

REQUIRED = ("file", "speaker", "emotion")


def read_labelled(
    csv_uri: str,
    *,
    mapping: Mapping[str, str] | None = None,
    endpoint_url: str | None = None,
) -> tuple[pa.Table, DropSummary]:
    """Build a canonical manifest from a CSV of labelled audio files (module docstring).

    Args:
        csv_uri: the CSV (local or ``s3://``).
        mapping: emotion -> label (case-insensitive keys); rows whose emotion is not in it are
            dropped and counted. None keeps every emotion as written.
        endpoint_url: an explicit S3 endpoint.

    Returns:
        The manifest (one row per file; extras: the CSV's other columns) and the drop summary.

    Raises:
        BadInputError: a required column is missing, or rows have an empty file, speaker or
            emotion (line numbers named).
    """
    if not is_remote(csv_uri):
        csv_uri = os.path.abspath(csv_uri)
    fs, path = get_filesystem(csv_uri, endpoint_url)
    text = read_text(fs, path, csv_uri)
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise BadInputError(
            f"labelled CSV needs the columns {list(REQUIRED)} (optional: conversation); "
            f"missing {missing}, found {columns}",
            csv_uri,
        )
    extras = [c for c in columns if c not in (*REQUIRED, "conversation")]
    folder = posixpath.dirname(csv_uri) if is_remote(csv_uri) else os.path.dirname(csv_uri)
    lookup = None if mapping is None else {k.lower(): v for k, v in mapping.items()}
    summary = DropSummary("labelled")
    records: list[dict[str, Any]] = []
    positions: dict[str, int] = {}
    bad: list[str] = []
    for line, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        if not all(row.get(c) for c in REQUIRED):
            bad.append(f"line {line}")
            continue
        emotion = row["emotion"]
        label = emotion if lookup is None else lookup.get(emotion.lower())
        if label is None:
            summary.count_code(emotion)
            continue
        conversation = row.get("conversation") or row["speaker"]
        index = positions.get(conversation, 0)
        positions[conversation] = index + 1
        summary.count_kept(label)
        records.append(
            {
                "conversation_id": conversation,
                "utterance_index": index,
                "speaker": row["speaker"],
                "audio_uri": _resolve(row["file"], folder),
                "emotion": label,
                **{c: row.get(c) or None for c in extras},
            }
        )
    if bad:
        raise BadInputError(f"empty file, speaker or emotion on {examples(bad)}", csv_uri)
    summary.conversations = len(positions)
    return manifest_table(records, pa.schema([(c, pa.string()) for c in extras])), summary


def _resolve(file: str, folder: str) -> str:
    if "://" in file or os.path.isabs(file):
        return file
    return posixpath.join(folder, file) if is_remote(folder) else os.path.join(folder, file)
