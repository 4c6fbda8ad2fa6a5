"""Tokenize a corpus once: manifest -> speech codes per utterance, cached as a ``datasets`` table.

Training reads every utterance many times (random windows, many epochs) but the speech
tokenizer is the slow part, so each utterance is tokenized once and kept on disk as an Arrow
dataset under ``<cache>/tokens/<key>``. The key hashes the manifest's bytes and the tokenizer's
fingerprint: a new codebook or a changed manifest never reuses stale codes. The cache is
written as it is tokenized (batches of utterances -> Arrow record batches) and read back
memory-mapped, so building it holds one tokenizer batch and one writer batch, not the corpus.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
from tqdm import tqdm

from dpm_worker.audio import conversation_segments
from dpm_worker.corpus import iter_conversations, manifest_fingerprint
from dpm_worker.errors import ConfigError
from dpm_worker.speech import SpeechTokenizer, tokenize_utterances
from dpm_worker.storage import cache_root as dpm_cache_root
from dpm_worker.utterance import Utterance

log = logging.getLogger(__name__)

# Part of the cache key; bump it when the rows written for the same manifest change.
CACHE_FORMAT = 2
# Rows buffered before datasets writes them to Arrow (its default is 1000 rows).
WRITER_BATCH_ROWS = 256

FEATURES = datasets.Features(
    {
        "conversation_id": datasets.Value("string"),
        "utterance_index": datasets.Value("int32"),
        "speaker": datasets.Value("string"),
        "emotion": datasets.Value("string"),
        "expressive": datasets.Value("bool"),
        "codes": datasets.Sequence(datasets.Value("int16")),
    }
)


def iter_waveforms(
    manifest_uri: str,
    conversation_ids: set[str] | None = None,
    *,
    endpoint_url: str | None = None,
) -> Iterator[Utterance]:
    """Every utterance with its float32 16 kHz mono samples, conversation by conversation.

    Each is the audio stage's own record: a VAD turn has its own index, speaker, times and
    (no) emotion, not those of the recording's manifest row.
    """
    for conv_id, rows in iter_conversations(manifest_uri, endpoint_url=endpoint_url):
        if conversation_ids is not None and conv_id not in conversation_ids:
            continue
        yield from conversation_segments(rows, endpoint_url=endpoint_url)


def conversation_ids(manifest_uri: str, *, endpoint_url: str | None = None) -> list[str]:
    """The manifest's conversation ids, sorted."""
    from dpm_worker.corpus import read_manifest

    table = read_manifest(manifest_uri, endpoint_url=endpoint_url)
    return sorted(set(table.column("conversation_id").to_pylist()))


def tokenize_corpus(
    manifest_uri: str,
    tokenizer: SpeechTokenizer,
    tokenizer_fingerprint: str,
    *,
    cache_root: str | Path | None = None,
    endpoint_url: str | None = None,
    progress: bool = True,
) -> datasets.Dataset:
    """Speech codes of every utterance in the manifest, tokenized once and cached.

    Args:
        manifest_uri: a canonical manifest (file or folder; local or s3://).
        tokenizer: the speech tokenizer.
        tokenizer_fingerprint: identifies the tokenizer's weights (part of the cache key).
        cache_root: the cache folder (default ``$DPM_CACHE_DIR`` or ``~/.cache/dpm``).
        endpoint_url: explicit S3 endpoint.
        progress: show a tqdm bar over utterances.

    Returns:
        A dataset with columns conversation_id, utterance_index, speaker, emotion (nullable),
        expressive (nullable; the synthetic corpus's flag) and codes, in dialogue order.
    """
    manifest = manifest_fingerprint(manifest_uri, endpoint_url=endpoint_url)
    # CACHE_FORMAT: caches written before VAD turns kept their own identity are not reused.
    key = hashlib.sha256(f"{manifest}:{tokenizer_fingerprint}:{CACHE_FORMAT}".encode()).hexdigest()[
        :32
    ]
    folder = Path(cache_root or dpm_cache_root()) / "tokens" / key
    if (folder / "dataset_info.json").is_file():
        log.info("speech codes cached at %s", folder)
        return datasets.load_from_disk(str(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=folder.parent))
    try:
        # Rows stream from the tokenizer into Arrow files (datasets writes every
        # ``writer_batch_size`` rows): the corpus's waves and codes are never all in memory.
        dataset = datasets.Dataset.from_generator(
            _rows,
            features=FEATURES,
            cache_dir=str(staged / "build"),
            gen_kwargs={"manifest_uri": manifest_uri, "tokenizer": tokenizer,
                        "endpoint_url": endpoint_url, "progress": progress},
            fingerprint=key,
            writer_batch_size=WRITER_BATCH_ROWS,
        )  # fmt: skip
        dataset.save_to_disk(str(staged / "dataset"))
        del dataset
        if folder.exists():  # another process finished first; theirs is identical
            log.info("speech codes were cached concurrently at %s", folder)
        else:
            os.rename(staged / "dataset", folder)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return datasets.load_from_disk(str(folder))


def _rows(
    manifest_uri: str, tokenizer: SpeechTokenizer, endpoint_url: str | None, progress: bool
) -> Iterator[dict]:
    """The cache's rows, utterance by utterance, tokenized in batches."""
    waves = iter_waveforms(manifest_uri, endpoint_url=endpoint_url)
    with tqdm(desc="tokenize", unit="utt", disable=not progress) as bar:
        for utt in tokenize_utterances(waves, tokenizer):
            yield {
                "conversation_id": utt.conversation_id,
                "utterance_index": utt.utterance_index,
                "speaker": utt.speaker,
                "emotion": utt.emotion,
                "expressive": utt.expressive,
                "codes": utt.codes().astype(np.int16),
            }
            bar.update(1)


def group_conversations(dataset: datasets.Dataset) -> dict[str, list[dict]]:
    """Rows per conversation, in dialogue order."""
    grouped: dict[str, list[dict]] = {}
    for row in dataset:
        grouped.setdefault(row["conversation_id"], []).append(row)
    for rows in grouped.values():
        rows.sort(key=lambda r: r["utterance_index"])
    return grouped


def split_conversations(
    ids: Sequence[str], val_fraction: float, seed: int, group: str = ""
) -> tuple[list[str], list[str]]:
    """Seeded split by conversation (never by utterance: a conversation's speakers and moods
    must not leak from training into validation). At least one conversation on each side.

    ``group``: a regular expression; conversations whose ids give the same match (its first
    capture group if it has one, else the whole match) go to the same side, e.g. ``actor_\\d+``
    keeps an actor's augmented copies and orderings out of validation while the actor trains.
    Ids without a match are groups of their own. Validation takes whole groups, in seeded
    order, until it holds ``val_fraction`` of the conversations.
    """
    order = sorted(ids)
    pattern = re.compile(group) if group else None
    groups: dict[tuple[str, str], list[str]] = {}  # ungrouped ids are groups of one
    for conversation in order:
        match = pattern.search(conversation) if pattern else None
        if match is None:
            key = ("c", conversation)
        else:
            key = ("m", match.group(1) if match.re.groups else match.group(0))
        groups.setdefault(key, []).append(conversation)
    keys = sorted(groups)
    np.random.default_rng(seed).shuffle(keys)
    target = max(1, int(round(len(order) * val_fraction)))
    val: list[str] = []
    for key in keys[:-1]:  # the last group always trains
        if len(val) >= target:
            break
        val.extend(groups[key])
    if not val and len(order) > 1:
        raise ConfigError(
            f"train.val_group {group!r} puts all {len(order)} conversations in one group: "
            "validation needs a second one"
        )
    return sorted(set(order) - set(val)), sorted(val)
