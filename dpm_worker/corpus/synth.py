"""The synthetic conversational emotion corpus (DESIGN section 6), generated with espeak-ng.

Dyadic conversations; each speaker has a distinct voice and baseline prosody
(:mod:`dpm_worker.corpus.synth_voices`); each speaker's mood follows a Markov chain over their own
turns (it stays with ``mood_stay``, else is pulled to the partner's mood with ``mood_pull``,
else jumps to another label); each utterance is expressive with ``expressive_prob`` (its prosody
renders the mood) or spoken with the speaker's neutral prosody while still labelled with the
mood, so only context can recover it.

Output: ``OUT/audio/conv_NNNN.flac`` (16 kHz stereo, channel c = speaker c, silence between
turns) and ``OUT/manifest.parquet`` (canonical columns plus ``expressive`` and the rendered
prosody). Every random draw comes from a generator seeded by ``(seed, conversation index)``, so
the bytes depend only on the config, not on the number of worker processes.
"""

from __future__ import annotations

import io
import logging
import math
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from tqdm import tqdm

from dpm_worker.corpus.engines import engine_versions
from dpm_worker.corpus.moods import next_mood
from dpm_worker.corpus.randomized import RANDOMIZED_SCHEMA, generate_randomized_conversation
from dpm_worker.corpus.schema import DEFAULT_LABELS, MANIFEST_SCHEMA
from dpm_worker.corpus.synth_config import SynthConfig
from dpm_worker.corpus.synth_text import compose_sentence
from dpm_worker.corpus.synth_voices import (
    Prosody,
    Speaker,
    espeak_version,
    render_prosody,
    sample_speaker,
    synthesize,
)
from dpm_worker.errors import ConfigError, StorageError
from dpm_worker.storage import get_filesystem, join_uri, redact

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.parquet"
AUDIO_DIR = "audio"
_LEAD_IN_S = 0.4  # silence before the first and after the last turn

SYNTH_SCHEMA = pa.schema(
    list(MANIFEST_SCHEMA)
    + [
        pa.field("expressive", pa.bool_(), nullable=False),
        pa.field("intensity", pa.float32(), nullable=False),
        pa.field("voice", pa.string(), nullable=False),
        pa.field("f0_hz", pa.float32(), nullable=False),
        pa.field("range_pct", pa.int16(), nullable=False),
        pa.field("rate_wpm", pa.int16(), nullable=False),
        pa.field("level_dbfs", pa.float32(), nullable=False),
        pa.field("word_gap_10ms", pa.int16(), nullable=False),
        pa.field("tilt", pa.float32(), nullable=False),
    ]
)


def _speak(
    rng: np.random.Generator,
    speaker: Speaker,
    prosody: Prosody,
    config: SynthConfig,
    long: bool = False,
) -> tuple[np.ndarray, str]:
    """An utterance of a drawn target duration: retry with a shorter/longer sentence until the
    rendered audio fits ``[min_duration_s, max_duration_s]`` (the long-turn bounds when
    ``long``); pad or cut as a last resort."""
    lo, hi = config.min_duration_s, config.max_duration_s
    if long:
        lo, hi = config.long_turn_min_s, config.long_turn_max_s
    sr = config.sample_rate
    target_s = rng.uniform(lo + 0.2 * (hi - lo), hi - 0.2 * (hi - lo))
    # espeak-ng speaks about 1.25 x its nominal words per minute with these short words.
    words = target_s * prosody.rate_wpm / 60.0 * 1.25
    for _ in range(5):
        text = _compose_turn(rng, words) if long else compose_sentence(rng, words)
        audio = synthesize(text, speaker.voice, prosody, sr)
        duration = audio.size / sr
        if lo <= duration <= hi:
            return audio, text
        words *= (lo + hi) / 2.0 / max(duration, 0.1)
    if audio.size > int(hi * sr):
        audio = audio[: int(hi * sr)].copy()
        fade = int(0.02 * sr)
        audio[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    elif audio.size < int(math.ceil(lo * sr)):
        audio = np.concatenate([audio, np.zeros(int(math.ceil(lo * sr)) - audio.size, np.float32)])
    return audio, text


def _compose_turn(rng: np.random.Generator, words: float) -> str:
    """Sentences of about 8 words each until ``words`` words (one sentence is at most ~10)."""
    sentences: list[str] = []
    count = 0
    while count < words - 4:
        sentences.append(compose_sentence(rng, min(8.0, words - count)))
        count += len(sentences[-1].split())
    return " ".join(sentences) or compose_sentence(rng, words)


def generate_conversation(index: int, config: SynthConfig) -> tuple[bytes, list[dict[str, Any]]]:
    """Render conversation ``index``: its FLAC bytes and its manifest rows."""
    if config.randomize is not None:
        mixed, randomized_rows = generate_randomized_conversation(index, config)
        return encode_flac(mixed, config.sample_rate), randomized_rows
    rng = np.random.default_rng([config.seed, index])
    conv_id = config.conversation_id(index)
    audio_uri = f"{AUDIO_DIR}/{conv_id}.flac"
    sr = config.sample_rate
    n_utt = int(rng.integers(config.min_utterances, config.max_utterances + 1))
    first = sample_speaker(rng, f"{conv_id}_A", 0, config.baseline_spread, config.female_prob)
    second = sample_speaker(
        rng, f"{conv_id}_B", 1, config.baseline_spread, config.female_prob, avoid=first.voice
    )
    speakers = (first, second)
    moods = [DEFAULT_LABELS[int(rng.integers(len(DEFAULT_LABELS)))] for _ in speakers]
    spoken = [False, False]
    current = int(rng.integers(2))
    cursor = int(_LEAD_IN_S * sr)
    pieces: list[tuple[int, int, np.ndarray]] = []
    rows: list[dict[str, Any]] = []
    for i in range(n_utt):
        if i > 0:
            if rng.random() < config.switch_prob:
                current = 1 - current
            cursor += int(round(rng.uniform(config.min_gap_s, config.max_gap_s) * sr))
        speaker = speakers[current]
        if spoken[current]:
            moods[current] = next_mood(rng, moods[current], moods[1 - current], config)
        spoken[current] = True
        expressive = bool(rng.random() < config.expressive_prob)
        intensity = float(rng.uniform(0.8, 1.2)) * config.emotion_strength if expressive else 0.0
        prosody = render_prosody(speaker, moods[current], intensity, rng, config.jitter)
        # No draw at all when long turns are off, so such corpora keep their bytes.
        long = config.long_turn_prob > 0 and bool(rng.random() < config.long_turn_prob)
        audio, text = _speak(rng, speaker, prosody, config, long)
        pieces.append((current, cursor, audio))
        rows.append(
            {
                "conversation_id": conv_id,
                "utterance_index": i,
                "speaker": speaker.name,
                "audio_uri": audio_uri,
                "start_s": cursor / sr,
                "end_s": (cursor + audio.size) / sr,
                "channel": speaker.channel,
                "text": text,
                "emotion": moods[current],
                "rttm_uri": None,
                "expressive": expressive,
                "intensity": intensity,
                "voice": speaker.voice,
                "f0_hz": prosody.f0_hz,
                "range_pct": prosody.range_pct,
                "rate_wpm": prosody.rate_wpm,
                "level_dbfs": prosody.level_dbfs,
                "word_gap_10ms": prosody.gap_10ms,
                "tilt": prosody.tilt,
            }
        )
        cursor += audio.size
    total = cursor + int(_LEAD_IN_S * sr)
    signal = np.zeros((total, 2), dtype=np.float32)
    for channel, start, audio in pieces:
        signal[start : start + audio.size, channel] = audio
    if config.noise_dbfs is not None:
        noise = rng.standard_normal((total, 2), dtype=np.float32)
        signal += noise * np.float32(10.0 ** (config.noise_dbfs / 20.0))
    return encode_flac(signal, sr), rows


def encode_flac(signal: np.ndarray, sample_rate: int) -> bytes:
    """16-bit FLAC bytes of a float signal (frames x channels); deterministic."""
    pcm = np.clip(np.round(signal * 32767.0), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    # Level 0: twice as fast as the default for <1% more bytes (the noise floor dominates).
    sf.write(buffer, pcm, sample_rate, format="FLAC", subtype="PCM_16", compression_level=0.0)
    return buffer.getvalue()


def rows_to_table(rows: list[dict[str, Any]], config: SynthConfig) -> pa.Table:
    """The manifest table; the generator config and espeak-ng version (nothing time-dependent)
    in its metadata."""
    schema = SYNTH_SCHEMA if config.randomize is None else RANDOMIZED_SCHEMA
    # Optional manifest columns a generator does not fill (rttm_uri) are null.
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    metadata = {
        b"dpm.synth_config": config.to_json().encode(),
        b"dpm.synth_espeak": espeak_version().encode(),
    }
    if config.randomize is not None:
        metadata[b"dpm.synth_engines"] = engine_versions().encode()
    return pa.Table.from_pydict(columns, schema=schema.with_metadata(metadata))


def _write_bytes(uri: str, data: bytes) -> None:
    fs, path = get_filesystem(uri)
    try:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with fs.open(path, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise StorageError(f"cannot write {redact(uri)}: {exc}") from exc


def _render(task: tuple[int, SynthConfig]) -> tuple[int, bytes, list[dict[str, Any]]]:
    index, config = task
    data, rows = generate_conversation(index, config)
    return index, data, rows


def generate_corpus(
    out_uri: str, config: SynthConfig, workers: int = 1, progress: bool = False
) -> pa.Table:
    """Generate the corpus into ``out_uri`` (a local folder or ``s3://bucket/prefix``).

    Audio files are written first and the manifest last, so a manifest present means a
    complete corpus. Re-running with the same config rewrites identical bytes (for a given
    espeak-ng and libFLAC; the espeak-ng version is recorded in the manifest's metadata).
    Existing files of the same names are overwritten; other files are left alone.

    Args:
        out_uri: the output folder.
        config: the generator parameters.
        workers: conversations rendered in parallel (the output does not depend on it).
        progress: show a tqdm progress bar.

    Returns:
        The manifest table (as written to ``OUT/manifest.parquet``).
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    tasks = [(index, config) for index in range(config.conversations)]
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=config.conversations, unit="conv", disable=not progress, desc="synth")
    # Threads suffice: the heavy work (espeak-ng subprocesses, soxr, FLAC encoding) runs outside
    # the GIL, and unlike a process pool they need no __main__ guard in the caller's script.
    with ThreadPoolExecutor(workers) as pool:
        for index, data, conv_rows in pool.map(_render, tasks):
            _write_bytes(
                join_uri(out_uri, AUDIO_DIR, f"{config.conversation_id(index)}.flac"), data
            )
            rows.extend(conv_rows)
            bar.update(1)
            bar.set_postfix(utterances=len(rows))
    bar.close()
    table = rows_to_table(rows, config)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    _write_bytes(join_uri(out_uri, MANIFEST_NAME), buffer.getvalue())
    log.info(
        "synth: %d conversations, %d utterances -> %s",
        config.conversations,
        len(rows),
        redact(out_uri),
    )
    return table
