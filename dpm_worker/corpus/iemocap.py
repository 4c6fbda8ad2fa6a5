"""The IEMOCAP reader: ``IEMOCAP_full_release`` folders to canonical manifests (CORPORA.md).

One manifest row per utterance of the dialogue recording ``Session<N>/dialog/wav/<dialogue>.wav``,
located by the EmoEvaluation summary line's start/end; ``channel`` is null (the reader does not
guess which channel holds which actor). Dialogue order is by start time (overlaps kept), since
the ids' NNN counts one speaker's turns only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from dpm_worker.corpus.layouts import (
    IEMOCAP_4CLASS,
    DropSummary,
    examples,
    list_folder,
    manifest_table,
    read_text,
    root_uri,
)
from dpm_worker.errors import BadInputError
from dpm_worker.storage import get_filesystem, join_uri

_SESSION = re.compile(r"^Session(\d+)$")
# "[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]"
_SUMMARY = re.compile(
    r"^\[\s*(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)\s*\]\s+(\S+)\s+(\S+)\s+\[([^\]]*)\]\s*$"
)
# "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me."
_TRANSCRIPT = re.compile(r"^(\S+)\s+\[\s*[\d.]+\s*-\s*[\d.]+\s*\]:\s?(.*)$")


_IEMOCAP_EXTRAS = pa.schema(
    [
        ("utterance_id", pa.string()),
        ("session", pa.int16()),
        ("corpus_label", pa.string()),
        ("valence", pa.float64()),
        ("arousal", pa.float64()),
        ("dominance", pa.float64()),
    ]
)


def _parse_emo_evaluation(text: str, dialogue: str, uri: str) -> list[dict[str, Any]]:
    """The summary line of each utterance block; evaluator (C-/A-) and header lines skipped."""
    utterances: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line.startswith("["):
            continue  # header "% [START_TIME ...", blank lines, "C-E2:", "A-F1:" votes
        match = _SUMMARY.match(line)
        if match is None:
            raise BadInputError(f"line {number}: malformed summary line {line!r}", uri)
        start, end, utt_id, code, vad = match.groups()
        letter = utt_id[len(dialogue) + 1 : len(dialogue) + 2]
        if not utt_id.startswith(dialogue + "_") or letter not in ("F", "M"):
            raise BadInputError(
                f"line {number}: utterance id {utt_id!r} is not <{dialogue}>_<F|M><NNN>", uri
            )
        if utt_id in seen:
            raise BadInputError(f"line {number}: utterance id {utt_id!r} appears twice", uri)
        seen.add(utt_id)
        try:
            valence, arousal, dominance = (float(v) for v in vad.split(","))
        except ValueError:
            valence = arousal = dominance = None  # type: ignore[assignment]
        utterances.append(
            {
                "utterance_id": utt_id,
                "start_s": float(start),
                "end_s": float(end),
                "code": code.strip().lower(),
                "speaker": f"{utt_id[:5]}_{letter}",
                "valence": valence,
                "arousal": arousal,
                "dominance": dominance,
            }
        )
    return utterances


def _parse_transcription(text: str) -> dict[str, str]:
    texts = {}
    for line in text.splitlines():
        match = _TRANSCRIPT.match(line.strip())
        if match is not None:
            texts[match.group(1)] = match.group(2).strip()
    return texts


def read_iemocap(
    root: str,
    *,
    sessions: Sequence[int] | None = None,
    mapping: Mapping[str, str] = IEMOCAP_4CLASS,
    endpoint_url: str | None = None,
) -> tuple[pa.Table, DropSummary]:
    """Build a canonical manifest from an ``IEMOCAP_full_release`` folder.

    Args:
        root: the folder holding ``Session1`` .. ``Session5`` (local or ``s3://``).
        sessions: session numbers to read; None reads every session found.
        mapping: corpus code -> model label; codes not in it are dropped and counted.
        endpoint_url: an explicit S3 endpoint.

    Returns:
        The manifest (conversation_id = dialogue id, utterances ordered by start time,
        overlaps kept) with extra columns utterance_id, session, corpus_label, valence,
        arousal, dominance; and the drop summary.

    Raises:
        BadInputError: no or missing sessions, malformed summary lines, missing dialogue WAVs.
    """
    root = root_uri(root)
    fs, base = get_filesystem(root, endpoint_url)
    found = {
        int(m.group(1)): name
        for name, kind in list_folder(fs, base).items()
        if kind == "directory" and (m := _SESSION.match(name))
    }
    if not found:
        raise BadInputError(
            "no Session<N> folders found; expected the IEMOCAP_full_release layout", root
        )
    wanted = sorted(found) if sessions is None else sorted(set(sessions))
    absent = [n for n in wanted if n not in found]
    if absent:
        raise BadInputError(f"session(s) {absent} not found; found {sorted(found)}", root)
    mapping = {code.lower(): label for code, label in mapping.items()}
    summary = DropSummary("iemocap")
    records: list[dict[str, Any]] = []
    missing_wavs: list[str] = []
    for number in wanted:
        dialog = join_uri(base, found[number], "dialog")
        emo_dir = join_uri(dialog, "EmoEvaluation")
        wav_names = list_folder(fs, join_uri(dialog, "wav"))
        names = sorted(
            name
            for name, kind in list_folder(fs, emo_dir).items()
            if kind == "file" and name.endswith(".txt") and not name.startswith(".")
        )
        if not names:
            raise BadInputError("no EmoEvaluation/*.txt files", join_uri(root, found[number]))
        for name in names:
            dialogue = name[: -len(".txt")]
            emo_uri = join_uri(root, found[number], "dialog", "EmoEvaluation", name)
            utterances = _parse_emo_evaluation(
                read_text(fs, join_uri(emo_dir, name), emo_uri), dialogue, emo_uri
            )
            transcript = join_uri(dialog, "transcriptions", name)
            texts = (
                _parse_transcription(read_text(fs, transcript, transcript))
                if fs.exists(transcript)
                else {}
            )
            if f"{dialogue}.wav" not in wav_names:
                missing_wavs.append(f"{found[number]}/dialog/wav/{dialogue}.wav")
            audio_uri = join_uri(root, found[number], "dialog", "wav", f"{dialogue}.wav")
            # Dialogue order comes from the times, not the ids (NNN counts one speaker's turns).
            utterances.sort(key=lambda u: (u["start_s"], u["end_s"], u["utterance_id"]))
            index = 0
            for utt in utterances:
                label = mapping.get(utt["code"])
                if label is None:
                    summary.count_code(utt["code"])
                    continue
                if utt["end_s"] <= utt["start_s"]:
                    summary.count_reason("empty_or_reversed_times")
                    continue
                summary.count_kept(label)
                records.append(
                    {
                        "conversation_id": dialogue,
                        "utterance_index": index,
                        "speaker": utt["speaker"],
                        "audio_uri": audio_uri,
                        "start_s": utt["start_s"],
                        "end_s": utt["end_s"],
                        "channel": None,
                        "text": texts.get(utt["utterance_id"]),
                        "emotion": label,
                        "utterance_id": utt["utterance_id"],
                        "session": number,
                        "corpus_label": utt["code"],
                        "valence": utt["valence"],
                        "arousal": utt["arousal"],
                        "dominance": utt["dominance"],
                    }
                )
                index += 1
            summary.conversations += int(index > 0)
    if missing_wavs:
        raise BadInputError(
            f"{len(missing_wavs)} dialogue recording(s) missing: {examples(missing_wavs)}", root
        )
    return manifest_table(records, _IEMOCAP_EXTRAS), summary
