"""The RAVDESS speech reader: ``audio_speech_actors_01-24`` folders to canonical manifests.

RAVDESS (Livingstone & Russo 2018, CC BY-NC-SA 4.0) is acted speech: 24 actors, each saying two
statements in eight emotions, one 48 kHz file per take named ``03-01-EE-II-SS-RR-AA.wav``
(CORPORA.md). It has no dialogue order, so the reader writes one conversation per actor whose
order is drawn from a seed (``shuffled`` or ``inertia``, :mod:`dpm_worker.corpus.acted`). Each
file is one utterance.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from dpm_worker.corpus.acted import add_conversation, locate_layout
from dpm_worker.corpus.layouts import (
    RAVDESS_4CLASS,
    DropSummary,
    examples,
    list_folder,
    manifest_table,
    root_uri,
)
from dpm_worker.errors import BadInputError, ConfigError
from dpm_worker.storage import get_filesystem, join_uri

# modality 03 = audio-only, vocal channel 01 = speech; the song and video files are not speech
_NAME = re.compile(r"^03-01-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.wav$")
_ACTOR_DIR = re.compile(r"^Actor_(\d\d)$")
# the file name's emotion field
EMOTION_NAMES: dict[str, str] = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}

_RAVDESS_EXTRAS = pa.schema(
    [
        ("utterance_id", pa.string()),
        ("actor", pa.int16()),
        ("gender", pa.string()),
        ("corpus_label", pa.string()),
        ("intensity", pa.string()),
        ("statement", pa.int16()),
        ("repetition", pa.int16()),
        ("corpus", pa.string()),
    ]
)


def parse_actors(text: str | None) -> list[int] | None:
    """``"19-24"``, ``"1,3,5-7"`` -> actor numbers; None -> None (every actor found).

    Raises:
        ConfigError: not a list of numbers and ranges within 1-24.
    """
    if text is None:
        return None
    actors: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            first, last = int(lo), int(hi or lo)
            actors.update(range(first, last + 1))
    except ValueError:
        raise ConfigError(f"actors must look like 19-24 or 1,3,5-7, got {text!r}") from None
    if not actors or min(actors) < 1 or max(actors) > 24:
        raise ConfigError(f"actors must be within 1-24, got {text!r}")
    return sorted(actors)


def read_ravdess(
    root: str,
    *,
    actors: Sequence[int] | None = None,
    mapping: Mapping[str, str] = RAVDESS_4CLASS,
    order: str = "shuffled",
    seed: int = 0,
    stay: float = 0.7,
    endpoint_url: str | None = None,
) -> tuple[pa.Table, DropSummary]:
    """Build a canonical manifest from a RAVDESS speech folder, one conversation per actor.

    Args:
        root: ``audio_speech_actors_01-24/`` (holding ``Actor_01`` ..) or its parent.
        actors: actor numbers to read; None reads every actor found.
        mapping: RAVDESS emotion name (``neutral calm happy sad angry fearful disgust
            surprised``, the file name's codes 01-08) -> label; files of other emotions are
            dropped and counted.
        order: ``shuffled`` or ``inertia`` (:mod:`dpm_worker.corpus.acted`).
        seed: seeds every actor's order (actor ``a`` uses ``[seed, a]``).
        stay: ``inertia``'s probability of keeping the emotion.
        endpoint_url: an explicit S3 endpoint.

    Returns:
        The manifest (conversation_id ``ravdess_actor_AA``, speaker ``actor_AA``, rows in the
        drawn order) with extras utterance_id, actor, gender, corpus_label (the emotion's
        name), intensity, statement, repetition, corpus (``ravdess``); and the drop summary.

    Raises:
        BadInputError: no Actor_NN folders, a requested actor missing, or a folder with no
            speech files.
    """
    root = root_uri(root)
    fs, base = get_filesystem(root, endpoint_url)
    found, base, root = locate_layout(fs, base, root, "audio_speech_actors_01-24", _actor_folders)
    if not found:
        raise BadInputError(
            "no Actor_NN folders found; expected RAVDESS's audio_speech_actors_01-24 layout",
            root,
        )
    wanted = sorted(found) if actors is None else sorted(set(actors))
    absent = [a for a in wanted if a not in found]
    if absent:
        raise BadInputError(f"actor(s) {absent} not found; found {sorted(found)}", root)
    summary = DropSummary("ravdess")
    records: list[dict[str, Any]] = []
    empty: list[str] = []
    for actor in wanted:
        folder = found[actor]
        takes = []
        for name in sorted(list_folder(fs, join_uri(base, folder))):
            match = _NAME.match(name)
            if match is None:
                summary.count_reason("not_a_speech_file")
                continue
            code, intensity, statement, repetition, file_actor = match.groups()
            if int(file_actor) != actor:
                summary.count_reason("actor_mismatch")
                continue
            emotion = EMOTION_NAMES.get(code, code)
            label = mapping.get(emotion)
            if label is None:
                summary.count_code(emotion)
                continue
            takes.append(
                {
                    "conversation_id": f"ravdess_actor_{actor:02d}",
                    "speaker": f"actor_{actor:02d}",
                    "audio_uri": join_uri(root, folder, name),
                    "emotion": label,
                    "utterance_id": name[: -len(".wav")],
                    "actor": actor,
                    "gender": "male" if actor % 2 else "female",
                    "corpus_label": emotion,
                    "intensity": "strong" if intensity == "02" else "normal",
                    "statement": int(statement),
                    "repetition": int(repetition),
                    "corpus": "ravdess",
                }
            )
        if not takes:
            empty.append(folder)
            continue
        rng = np.random.default_rng([seed, actor])
        add_conversation(records, takes, order, rng, summary, stay=stay)
    if empty:
        raise BadInputError(f"no speech files in {examples(empty)}", root)
    return manifest_table(records, _RAVDESS_EXTRAS), summary


def _actor_folders(fs: Any, path: str) -> dict[int, str]:
    return {
        int(m.group(1)): name
        for name, kind in list_folder(fs, path).items()
        if kind == "directory" and (m := _ACTOR_DIR.match(name))
    }
