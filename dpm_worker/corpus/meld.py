"""The MELD reader: ``MELD.Raw`` CSVs and media folders to canonical manifests (CORPORA.md).

Every MELD clip *is* one utterance, so ``start_s = 0.0`` and ``end_s`` is the clip's duration
from its audio header, read by the caller's ``probe`` (probing audio is ``dpm_worker.audio``'s
job, e.g. ``clip_duration``; the corpus readers do not import it). A null start/end would mean "segment me by VAD" in the manifest
contract, which is wrong for MELD). The MP4 media cannot be decoded by libsndfile: audio the
user extracted beside them (same stem, ``.wav`` or ``.flac``) is used. Clips that have only the
MP4 fail the whole read with ONE error that counts and lists them and gives the ffmpeg command;
clips listed in the CSV with no media at all are dropped and counted as ``missing_audio``.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import Any

import pyarrow as pa

from dpm_worker.corpus.layouts import (
    MELD_7CLASS,
    DropSummary,
    examples,
    list_folder,
    manifest_table,
    read_text,
    root_uri,
)
from dpm_worker.errors import AudioError, BadInputError, ConfigError
from dpm_worker.storage import get_filesystem, join_uri

MELD_MEDIA_DIRS: Mapping[str, str] = MappingProxyType(
    {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
)
MELD_AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac")
_PROBE_THREADS = 16
_MELD_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")

_MELD_EXTRAS = pa.schema(
    [
        ("dialogue_id", pa.int32()),
        ("utterance_id", pa.int32()),
        ("corpus_label", pa.string()),
        ("sentiment", pa.string()),
        ("season", pa.string()),
        ("episode", pa.string()),
        ("episode_start", pa.string()),
        ("episode_end", pa.string()),
    ]
)


def _clip_duration(probe: Callable[[str], float], audio_uri: str) -> float | str:
    """The clip's duration in seconds from its header, or why it cannot be read."""
    try:
        return probe(audio_uri)
    except AudioError as exc:
        return exc.reason


def _meld_rows(text: str, uri: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    reader.fieldnames = header
    missing = [name for name in _MELD_COLUMNS if name not in header]
    if missing:
        raise BadInputError(f"CSV misses column(s) {missing}; found {header}", uri)
    rows = []
    seen: dict[tuple[int, int], int] = {}
    for row in reader:
        line = reader.line_num
        try:
            dia, utt = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
        except (TypeError, ValueError):
            raise BadInputError(
                f"line {line}: Dialogue_ID {row['Dialogue_ID']!r} / Utterance_ID "
                f"{row['Utterance_ID']!r} are not integers",
                uri,
            ) from None
        if (dia, utt) in seen:
            raise BadInputError(
                f"line {line}: dia{dia}_utt{utt} repeats line {seen[(dia, utt)]}", uri
            )
        seen[(dia, utt)] = line
        rows.append({**row, "dia": dia, "utt": utt})
    return rows


def read_meld(
    root: str,
    split: str = "train",
    *,
    probe: Callable[[str], float],
    mapping: Mapping[str, str] = MELD_7CLASS,
    audio_dir: str | None = None,
    endpoint_url: str | None = None,
) -> tuple[pa.Table, DropSummary]:
    """Build a canonical manifest from a ``MELD.Raw`` folder for one split.

    Args:
        root: the folder holding ``<split>_sent_emo.csv`` and the media folders.
        split: "train", "dev" or "test".
        probe: a clip's duration in seconds from its header, raising ``AudioError`` when it
            cannot be read (``functools.partial(dpm_worker.audio.clip_duration,
            endpoint_url=...)``).
        mapping: corpus emotion -> model label; emotions not in it are dropped and counted.
        audio_dir: where the extracted ``dia{D}_utt{U}.wav``/``.flac`` files are; default the
            split's media folder (beside the MP4s).
        endpoint_url: an explicit S3 endpoint.

    Returns:
        The manifest (conversation_id ``{split}_dia{D}``, utterances ordered by Utterance_ID,
        start_s 0 and end_s the clip's duration) with extra columns dialogue_id, utterance_id,
        corpus_label, sentiment, season, episode, episode_start, episode_end; and the summary.

    Raises:
        ConfigError: unknown split.
        BadInputError: missing CSV or columns, bad ids, MP4 clips without extracted audio
            (all listed in one error, with the ffmpeg command to extract them).
        AudioError: an extracted clip whose header cannot be read.
    """
    if split not in MELD_MEDIA_DIRS:
        raise ConfigError(f"unknown MELD split {split!r}; use one of {list(MELD_MEDIA_DIRS)}")
    root = root_uri(root)
    fs, base = get_filesystem(root, endpoint_url)
    csv_uri = join_uri(root, f"{split}_sent_emo.csv")
    if not fs.exists(join_uri(base, f"{split}_sent_emo.csv")):
        raise BadInputError(f"{split}_sent_emo.csv not found; expected the MELD.Raw layout", root)
    rows = _meld_rows(read_text(fs, join_uri(base, f"{split}_sent_emo.csv"), csv_uri), csv_uri)
    media_uri = root_uri(audio_dir) if audio_dir else join_uri(root, MELD_MEDIA_DIRS[split])
    media_fs, media_path = get_filesystem(media_uri, endpoint_url)
    names = list_folder(media_fs, media_path)
    if not names:
        raise BadInputError(f"media folder for split {split!r} is missing or empty", media_uri)

    mapping = {code.lower(): label for code, label in mapping.items()}
    summary = DropSummary("meld")
    needs_extraction: list[str] = []
    kept: list[tuple[dict[str, Any], str, str]] = []
    for row in sorted(rows, key=lambda r: (r["dia"], r["utt"])):
        code = (row["Emotion"] or "").strip().lower()
        label = mapping.get(code)
        if label is None:
            summary.count_code(code)
            continue
        stem = f"dia{row['dia']}_utt{row['utt']}"
        audio = next((stem + ext for ext in MELD_AUDIO_EXTENSIONS if stem + ext in names), None)
        if audio is not None:
            kept.append((row, label, join_uri(media_uri, audio)))
        elif stem + ".mp4" in names:
            needs_extraction.append(stem + ".mp4")
        else:
            summary.count_reason("missing_audio")
    if needs_extraction:
        raise BadInputError(
            f"{len(needs_extraction)} MELD clip(s) have only the MP4 video, which libsndfile "
            f"cannot decode: {examples(needs_extraction)}. Extract the audio beside each "
            f"clip with the same stem, e.g. 'ffmpeg -i dia0_utt0.mp4 -vn -ac 1 -ar 16000 "
            f"dia0_utt0.wav', for all of them: 'for f in *.mp4; do ffmpeg -nostdin -i \"$f\" "
            f'-vn -ac 1 -ar 16000 "${{f%.mp4}}.wav"; done\'',
            media_uri,
        )

    records: list[dict[str, Any]] = []
    unreadable: list[str] = []
    index_in: dict[str, int] = {}
    # Header reads are latency-bound on S3 (one small range GET each): overlap them.
    with ThreadPoolExecutor(max_workers=_PROBE_THREADS) as pool:
        durations = list(pool.map(lambda k: _clip_duration(probe, k[2]), kept))
    for (row, label, audio_uri), duration in zip(kept, durations, strict=True):
        if isinstance(duration, str):
            unreadable.append(f"{posixpath.basename(audio_uri)} ({duration})")
            continue
        conversation = f"{split}_dia{row['dia']}"
        index = index_in.get(conversation, 0)
        index_in[conversation] = index + 1
        summary.count_kept(label)
        records.append(
            {
                "conversation_id": conversation,
                "utterance_index": index,
                "speaker": (row["Speaker"] or "").strip(),
                "audio_uri": audio_uri,
                "start_s": 0.0,
                "end_s": duration,
                "channel": None,
                "text": row["Utterance"],
                "emotion": label,
                "dialogue_id": row["dia"],
                "utterance_id": row["utt"],
                "corpus_label": (row["Emotion"] or "").strip().lower(),
                "sentiment": row.get("Sentiment"),
                "season": row.get("Season"),
                "episode": row.get("Episode"),
                "episode_start": row.get("StartTime"),
                "episode_end": row.get("EndTime"),
            }
        )
    if unreadable:
        raise AudioError(
            f"{len(unreadable)} extracted clip(s) cannot be read: {examples(unreadable)}",
            media_uri,
        )
    summary.conversations = len(index_in)
    return manifest_table(records, _MELD_EXTRAS), summary
