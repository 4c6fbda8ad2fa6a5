"""Augmented copies of a labelled corpus: new voices through new lines, for training.

A model trained on a few dozen real speakers learns those voices and that microphone. Each
copy of a conversation here is the same speaker's utterances rendered as if by another voice
through another line, drawn once per copy (a voice and a line stay the same through a
conversation, as they do in a call):

- voice: a pitch shift (sox ``pitch``, formants kept roughly in place), a tempo factor (sox
  ``tempo``, WSOLA) and a gain;
- line: the domain randomizer's channel chain (:mod:`dpm_worker.corpus.channel`: room
  reverberation, noise at a drawn SNR, telephone band through a codec);
- order: the copy's dialogue order is drawn again (``shuffled`` or ``inertia``, as the RAVDESS
  reader draws it), or the source's is kept (``keep``).

Every draw comes from ``[seed, copy, crc32(conversation_id)]`` and sox is deterministic, so the
same config gives the same bytes. Copies are written as 16 kHz mono FLAC, one file per
utterance, beside a manifest whose conversation and speaker ids carry ``~aug<k>``.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import soundfile as sf

from dpm_worker.audio import SAMPLE_RATE, conversation_segments
from dpm_worker.corpus.acted import ORDERS, conversation_order
from dpm_worker.corpus.channel import ChannelConfig, apply_line, draw_line
from dpm_worker.corpus.cues import sox_pitch_tempo
from dpm_worker.corpus.manifest import iter_conversations
from dpm_worker.corpus.manifest_files import write_manifest
from dpm_worker.corpus.schema import MANIFEST_SCHEMA
from dpm_worker.errors import ConfigError
from dpm_worker.storage import get_filesystem, join_uri

_EXTRAS = pa.schema(
    [
        ("source_conversation", pa.string()),
        ("source_index", pa.int32()),
        ("copy", pa.int16()),
        ("line", pa.string()),
        ("cents", pa.float32()),
        ("tempo", pa.float32()),
        ("gain_db", pa.float32()),
    ]
)


@dataclass(frozen=True)
class AugmentConfig:
    """How many copies and how far they vary.

    Args:
        copies: augmented copies per conversation.
        keep_clean: also write the source conversation itself (as copy 0, unchanged).
        cents: range of the pitch shift (cents; 100 = one semitone).
        tempo: range of the tempo factor.
        gain_db: range of the gain.
        order: ``keep`` the source order, or draw a ``shuffled`` or ``inertia`` one per copy.
        channel: the line's randomizer.
    """

    copies: int = 4
    keep_clean: bool = True
    cents: tuple[float, float] = (-300.0, 300.0)
    tempo: tuple[float, float] = (0.88, 1.12)
    gain_db: tuple[float, float] = (-12.0, 6.0)
    order: str = "keep"
    channel: ChannelConfig = field(default_factory=ChannelConfig)

    def __post_init__(self) -> None:
        if self.copies < 0:
            raise ConfigError(f"copies must be >= 0, got {self.copies}")
        if self.copies == 0 and not self.keep_clean:
            raise ConfigError("nothing to write: copies 0 and keep_clean false")
        if self.order not in ("keep", *ORDERS):
            raise ConfigError(f"order must be keep or one of {ORDERS}, got {self.order!r}")
        for name, (lo, hi) in (
            ("cents", self.cents),
            ("tempo", self.tempo),
            ("gain_db", self.gain_db),
        ):
            if not lo <= hi:
                raise ConfigError(f"{name} must be a range lo <= hi, got {(lo, hi)!r}")
        if not 0.5 <= self.tempo[0] <= self.tempo[1] <= 2.0:
            raise ConfigError(f"tempo must lie within [0.5, 2], got {self.tempo!r}")


def augment_corpus(
    manifest_uri: str,
    out: str,
    config: AugmentConfig,
    *,
    seed: int = 0,
    endpoint_url: str | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> pa.Table:
    """Write augmented copies of every conversation of ``manifest_uri`` under ``out``.

    Args:
        manifest_uri: a canonical manifest (its utterances are cut as the labeling job cuts
            them: times, whole files or VAD turns).
        out: the output folder (local or ``s3://``): ``audio/`` and ``manifest.parquet``.
        config: copies and ranges.
        seed: seeds every draw.
        endpoint_url: an explicit S3 endpoint.
        progress: called with each conversation id and the utterances written for it.

    Returns:
        The manifest written (``audio_uri`` relative to ``out``).
    """
    fs, base = get_filesystem(out, endpoint_url)
    records: list[dict[str, Any]] = []
    for conv_id, rows in iter_conversations(manifest_uri, endpoint_url=endpoint_url):
        utterances = list(conversation_segments(rows, endpoint_url=endpoint_url))
        first = 0 if config.keep_clean else 1
        for copy in range(first, config.copies + 1):
            rng = np.random.default_rng([seed, copy, zlib.crc32(conv_id.encode())])
            voice = {
                "cents": float(rng.uniform(*config.cents)),
                "tempo": float(rng.uniform(*config.tempo)),
                "gain_db": float(rng.uniform(*config.gain_db)),
            }
            line = draw_line(rng, config.channel)
            labels = [u.emotion or "" for u in utterances]
            order = (
                list(range(len(utterances)))
                if config.order == "keep" or copy == 0
                else conversation_order(labels, config.order, rng)
            )
            new_id = conv_id if copy == 0 else f"{conv_id}~aug{copy}"
            fs.makedirs(join_uri(base, "audio", _safe(new_id)), exist_ok=True)
            for index, position in enumerate(order):
                utt = utterances[position]
                assert utt.samples is not None  # conversation_segments decodes every one
                audio = utt.samples
                if copy > 0:
                    audio = sox_pitch_tempo(audio, SAMPLE_RATE, voice["cents"], voice["tempo"])
                    audio = audio * np.float32(10.0 ** (voice["gain_db"] / 20.0))
                    audio = apply_line(audio, line, SAMPLE_RATE, rng)
                relative = f"audio/{_safe(new_id)}/{index:05d}.flac"
                buffer = io.BytesIO()
                sf.write(buffer, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="FLAC")
                fs.pipe_file(join_uri(base, *relative.split("/")), buffer.getvalue())
                records.append(
                    {
                        "conversation_id": new_id,
                        "utterance_index": index,
                        "speaker": utt.speaker if copy == 0 else f"{utt.speaker}~aug{copy}",
                        "audio_uri": relative,
                        "emotion": utt.emotion,
                        "source_conversation": conv_id,
                        "source_index": utt.utterance_index,
                        "copy": copy,
                        "line": "source" if copy == 0 else line.name,
                        "cents": 0.0 if copy == 0 else voice["cents"],
                        "tempo": 1.0 if copy == 0 else voice["tempo"],
                        "gain_db": 0.0 if copy == 0 else voice["gain_db"],
                    }
                )
        if progress is not None:
            progress(conv_id, len(utterances) * (config.copies + 1 - first))
    table = pa.Table.from_pylist(records, schema=pa.schema(list(MANIFEST_SCHEMA) + list(_EXTRAS)))
    write_manifest(table, join_uri(out, "manifest.parquet"), endpoint_url=endpoint_url)
    return table


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_~." else "_" for c in name)
