"""The EMOVO reader: ``EMOVO/f1 .. m3/EMO-SPK-SENT.wav`` folders to canonical manifests.

EMOVO (Costantini et al., LREC 2014; research, non-commercial) is acted Italian speech: six
actors (f1-f3, m1-m3) each saying 14 nonsense or neutral sentences in seven emotions, one 48 kHz
file per take named ``EMO-SPK-SENT.wav`` (CORPORA.md). One conversation per actor, its order
drawn from a seed (:mod:`dpm_worker.corpus.acted`).

The files are stereo, but the two channels are two microphones on the same voice, not two
speakers: every row names ``channel=0``, so a conversation is read from one microphone and is
never split into per-channel speakers (segments rule 3). Averaging the channels would not do:
measured on the release, the second microphone lags the first by 15-40 samples for five of the
six actors, so their mean is comb-filtered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from dpm_worker.corpus.acted import add_conversation, locate_layout
from dpm_worker.corpus.layouts import (
    EMOVO_4CLASS,
    DropSummary,
    examples,
    list_folder,
    manifest_table,
    root_uri,
)
from dpm_worker.errors import BadInputError
from dpm_worker.storage import get_filesystem, join_uri

EMOVO_SPEAKERS: tuple[str, ...] = ("f1", "f2", "f3", "m1", "m2", "m3")
EMOVO_CHANNEL = 0  # module docstring: one microphone, never the two as two speakers
_NAME = re.compile(r"^([a-z]{3})-([fm][1-3])-([a-z]\d)\.wav$", re.IGNORECASE)

_EMOVO_EXTRAS = pa.schema(
    [
        ("utterance_id", pa.string()),
        ("gender", pa.string()),
        ("corpus_label", pa.string()),
        ("sentence", pa.string()),
        ("corpus", pa.string()),
    ]
)


def read_emovo(
    root: str,
    *,
    speakers: Sequence[str] | None = None,
    mapping: Mapping[str, str] = EMOVO_4CLASS,
    order: str = "shuffled",
    seed: int = 0,
    stay: float = 0.7,
    endpoint_url: str | None = None,
) -> tuple[pa.Table, DropSummary]:
    """Build a canonical manifest from an EMOVO folder, one conversation per actor.

    Args:
        root: the ``EMOVO/`` folder (holding ``f1`` .. ``m3``) or its parent.
        speakers: actors to read (``f1`` .. ``m3``); None reads every actor found.
        mapping: EMOVO emotion code (``neu gio tri rab dis pau sor``) -> label; files of other
            codes are dropped and counted.
        order: ``shuffled`` or ``inertia`` (:mod:`dpm_worker.corpus.acted`).
        seed: seeds every actor's order (actor ``f1`` .. ``m3`` uses ``[seed, 1 .. 6]``).
        stay: ``inertia``'s probability of keeping the emotion.
        endpoint_url: an explicit S3 endpoint.

    Returns:
        The manifest (conversation_id ``emovo_f1``, speaker ``emovo_f1``, channel 0, rows in
        the drawn order) with extras utterance_id, gender, corpus_label (the emotion code),
        sentence (``b1`` .. ``n5``), corpus (``emovo``); and the drop summary.

    Raises:
        BadInputError: no actor folders, a requested actor missing, or a folder with no
            speech files.
    """
    root = root_uri(root)
    fs, base = get_filesystem(root, endpoint_url)
    found, base, root = locate_layout(fs, base, root, "EMOVO", _speaker_folders)
    if not found:
        raise BadInputError("no f1 .. m3 folders found; expected EMOVO's layout", root)
    wanted = [s for s in EMOVO_SPEAKERS if s in found and (speakers is None or s in speakers)]
    absent = sorted(set(speakers or ()) - set(found))
    if absent:
        raise BadInputError(f"speaker(s) {absent} not found; found {sorted(found)}", root)
    summary = DropSummary("emovo")
    records: list[dict[str, Any]] = []
    empty: list[str] = []
    for speaker in wanted:
        folder = found[speaker]
        takes = []
        for name in sorted(list_folder(fs, join_uri(base, folder))):
            match = _NAME.match(name)
            if match is None:
                summary.count_reason("not_a_speech_file")
                continue
            code, file_speaker, sentence = (g.lower() for g in match.groups())
            if file_speaker != speaker:
                summary.count_reason("speaker_mismatch")
                continue
            label = mapping.get(code)
            if label is None:
                summary.count_code(code)
                continue
            takes.append(
                {
                    "conversation_id": f"emovo_{speaker}",
                    "speaker": f"emovo_{speaker}",
                    "audio_uri": join_uri(root, folder, name),
                    "channel": EMOVO_CHANNEL,
                    "emotion": label,
                    "utterance_id": name[: -len(".wav")],
                    "gender": "female" if speaker.startswith("f") else "male",
                    "corpus_label": code,
                    "sentence": sentence,
                    "corpus": "emovo",
                }
            )
        if not takes:
            empty.append(folder)
            continue
        rng = np.random.default_rng([seed, EMOVO_SPEAKERS.index(speaker) + 1])
        add_conversation(records, takes, order, rng, summary, stay=stay)
    if empty:
        raise BadInputError(f"no speech files in {examples(empty)}", root)
    return manifest_table(records, _EMOVO_EXTRAS), summary


def _speaker_folders(fs: Any, path: str) -> dict[str, str]:
    return {
        name.lower(): name
        for name, kind in list_folder(fs, path).items()
        if kind == "directory" and name.lower() in EMOVO_SPEAKERS
    }
