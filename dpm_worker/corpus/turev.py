"""The TurEV-DB reader: ``Sound Source/Angry|Calm|Happy|Sad/SPK_CODE_WORD.wav`` to manifests.

TurEV-DB (Canpolat et al., SLTU 2020; CC BY-NC-ND 4.0) is acted Turkish speech: six speakers
saying single words in four emotions, 44.1 kHz mono (CORPORA.md). The folder is the emotion;
the file name's ``CODE`` (``kz`` angry, ``sk`` calm, ``mt`` happy, ``hl`` sad) repeats it and is
kept as ``corpus_code``. One conversation per speaker, its order drawn from a seed
(:mod:`dpm_worker.corpus.acted`).

Its licence forbids derivatives: it is a validation corpus that no shipped weights may be
trained on (DESIGN section 6).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from dpm_worker.corpus.acted import add_conversation, locate_layout
from dpm_worker.corpus.layouts import (
    TUREV_4CLASS,
    TUREV_EMOTIONS,
    DropSummary,
    list_folder,
    manifest_table,
    root_uri,
)
from dpm_worker.errors import BadInputError
from dpm_worker.storage import get_filesystem, join_uri

TUREV_SPEAKERS: tuple[str, ...] = ("1157", "1234", "1358", "1984", "6783", "7895")
_NAME = re.compile(r"^(\d{4})_([a-z]+)_(.+)\.wav$", re.IGNORECASE)

_TUREV_EXTRAS = pa.schema(
    [
        ("utterance_id", pa.string()),
        ("corpus_label", pa.string()),
        ("corpus_code", pa.string()),
        ("word", pa.string()),
        ("corpus", pa.string()),
    ]
)


def read_turev(
    root: str,
    *,
    speakers: Sequence[str] | None = None,
    mapping: Mapping[str, str] = TUREV_4CLASS,
    order: str = "shuffled",
    seed: int = 0,
    stay: float = 0.7,
    endpoint_url: str | None = None,
) -> tuple[pa.Table, DropSummary]:
    """Build a canonical manifest from a TurEV-DB folder, one conversation per speaker.

    Args:
        root: the ``Sound Source/`` folder (holding ``Angry/ Calm/ Happy/ Sad/``) or its parent.
        speakers: 4-digit speaker ids to read; None reads every speaker found.
        mapping: emotion folder name, lower-cased (``angry calm happy sad``) -> label; files
            of other folders are dropped and counted.
        order: ``shuffled`` or ``inertia`` (:mod:`dpm_worker.corpus.acted`).
        seed: seeds every speaker's order (speaker ``s`` uses ``[seed, int(s)]``).
        stay: ``inertia``'s probability of keeping the emotion.
        endpoint_url: an explicit S3 endpoint.

    Returns:
        The manifest (conversation_id ``turev_SPK``, speaker ``turev_SPK``, rows in the drawn
        order) with extras utterance_id, corpus_label (the folder's emotion), corpus_code,
        word, corpus (``turev``); and the drop summary.

    Raises:
        BadInputError: no emotion folders, or a requested speaker with no files.
    """
    root = root_uri(root)
    fs, base = get_filesystem(root, endpoint_url)
    found, base, root = locate_layout(fs, base, root, "Sound Source", _emotion_folders)
    if not found:
        raise BadInputError(
            "no Angry/ Calm/ Happy/ Sad/ folders found; expected TurEV-DB's Sound Source layout",
            root,
        )
    summary = DropSummary("turev")
    takes: dict[str, list[dict[str, Any]]] = {}
    for emotion, folder in sorted(found.items()):
        for name in sorted(list_folder(fs, join_uri(base, folder))):
            match = _NAME.match(name)
            if match is None:
                summary.count_reason("not_a_speech_file")
                continue
            speaker, code, word = match.groups()
            if speakers is not None and speaker not in speakers:
                continue
            label = mapping.get(emotion)
            if label is None:
                summary.count_code(emotion)
                continue
            takes.setdefault(speaker, []).append(
                {
                    "conversation_id": f"turev_{speaker}",
                    "speaker": f"turev_{speaker}",
                    "audio_uri": join_uri(root, folder, name),
                    "emotion": label,
                    "utterance_id": name[: -len(".wav")],
                    "corpus_label": emotion,
                    "corpus_code": code.lower(),
                    "word": word,
                    "corpus": "turev",
                }
            )
    absent = sorted(set(speakers or ()) - set(takes))
    if absent:
        raise BadInputError(f"speaker(s) {absent} have no files; found {sorted(takes)}", root)
    records: list[dict[str, Any]] = []
    for speaker in sorted(takes):
        rng = np.random.default_rng([seed, int(speaker)])
        add_conversation(records, takes[speaker], order, rng, summary, stay=stay)
    return manifest_table(records, _TUREV_EXTRAS), summary


def _emotion_folders(fs: Any, path: str) -> dict[str, str]:
    """Lower-cased emotion -> folder name, for the folders of TurEV-DB's four emotions and
    any other folder beside them (counted as an unmapped emotion, never silently skipped)."""
    folders = {
        name.lower(): name for name, kind in list_folder(fs, path).items() if kind == "directory"
    }
    return folders if any(e in folders for e in TUREV_EMOTIONS) else {}
