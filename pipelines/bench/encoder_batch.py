"""``dpm bench encoder_batch``: the speech encoder one wave at a time against length-bucketed
batches, for speed and for what the padding moves (states, units, summaries, labels).

Whisper's encoder has no attention mask, so a batch of unequal waves is padded (with the log-mel
of silence, to the next multiple of ``bucket_frames``) and the real frames' states move a little
(``dpm_worker/speech/encoder.py``). On the real corpora given (``--corpus``, read as the job
reads them), for each ``--buckets`` value and ``--batches`` size, in one run:

- ``encode``: seconds of the encoder alone over every utterance (log-mels computed beforehand),
  configurations interleaved ``--rounds`` times (each round starting at another), median;
  ``speedup`` against one at a time.
- ``states``: per utterance, ``|S_batched - S_alone| / |S_alone|`` (mean, p99, max), the
  largest relative change of a pooled mean, the share of 25 Hz units that stay the same, and
  the pieces per encoder call (``mean_batch``) when the whole corpus is encoded together.
- ``labels``: each corpus tokenized both ways and labeled by the model in one configuration:
  the share of equal labels and the largest change of any probability.

Printed JSON: ``{"encode": {...}, "states": {...}, "labels": {...}}``, keyed by
``batch<B>_bucket<F>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from dpm_worker.errors import ConfigError
from pipelines.bench.command import print_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="comma-separated manifests")
    parser.add_argument("--model", default=None, help="model folder (the packaged default)")
    parser.add_argument("--batches", default="4,8,16", help="batch sizes (%(default)s)")
    parser.add_argument(
        "--buckets", default="2,26,50", help="bucket lengths in mel frames (%(default)s)"
    )
    parser.add_argument("--threads", type=int, default=1, help="encoder threads (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (%(default)s)")
    parser.add_argument(
        "--time-utterances", type=int, default=64, help="utterances timed (%(default)s)"
    )
    parser.add_argument("--limit-conversations", type=int, default=None, help="per corpus")
    parser.add_argument("--json", default=None, help="also write the JSON here")


def run(args: argparse.Namespace) -> int:
    import torch

    from dpm_worker.memory import LabelingConfig, label_batched
    from dpm_worker.model import load_model
    from dpm_worker.speech import (
        EncoderTokenizer,
        SpeechEncoder,
        encoder_weights,
        tokenize_utterances,
    )

    batches = [int(b) for b in args.batches.split(",")]
    buckets = [int(b) for b in args.buckets.split(",")]
    if args.rounds < 1 or min(batches) < 2 or min(buckets) < 2:
        raise ConfigError("--rounds must be >= 1, --batches and --buckets >= 2")
    torch.set_num_threads(1)
    model = load_model(args.model)
    tokenizer = model.speech_tokenizer
    if not isinstance(tokenizer, EncoderTokenizer):
        raise ConfigError("the model's speech tokenizer is not the pretrained encoder's")
    alone = SpeechEncoder(
        encoder_weights(tokenizer.config.encoder), device="cpu", threads=args.threads
    )
    corpora = {uri: _read(uri, model, args.limit_conversations) for uri in args.corpus.split(",")}
    waves = [u.samples for convs in corpora.values() for conv in convs for u in conv]
    mels = [alone.log_mel(w) for w in waves]
    timed = {"alone": (1, 2)} | {f"batch{b}_bucket{f}": (b, f) for f in buckets for b in batches}
    # the rows of a batch are independent (measured: equal lengths give bitwise equal states),
    # so what padding moves depends on the bucket only: measured at the largest batch
    configs = {"alone": (1, 2)} | {f"bucket{f}": (max(batches), f) for f in buckets}

    def encode_with(batch: int, bucket: int, some: list[np.ndarray]) -> list[np.ndarray]:
        alone.batch, alone.bucket_frames = batch, bucket
        return alone.encode_mels(some)

    seconds: dict[str, list[float]] = {name: [] for name in timed}
    order = list(timed.items())
    for round_ in range(args.rounds):
        # each round starts at another configuration: no one is always first after a pause
        shift = round_ % len(order)
        for name, (batch, bucket) in order[shift:] + order[:shift]:
            start = time.perf_counter()
            encode_with(batch, bucket, mels[: args.time_utterances])
            seconds[name].append(time.perf_counter() - start)
    states = {name: encode_with(*config, mels) for name, config in configs.items()}
    base = statistics.median(seconds["alone"])
    report: dict = {
        "corpora": list(corpora),
        "utterances": len(waves),
        "timed_utterances": min(len(waves), args.time_utterances),
        "audio_s": round(sum(len(w) for w in waves) / 16_000, 1),
        "threads": args.threads,
        "encode": {
            name: {
                "seconds": round(statistics.median(s), 3),
                "speedup": round(base / statistics.median(s), 3),
            }
            for name, s in seconds.items()
        },
        "states": {
            name: _state_deltas(tokenizer, states["alone"], states[name])
            | {"mean_batch": _mean_batch(mels, batch, bucket)}
            for name, (batch, bucket) in configs.items()
        },
    }
    labeling = LabelingConfig()
    labels: dict[str, dict] = {}
    for name, (batch, bucket) in configs.items():
        alone.batch, alone.bucket_frames = batch, bucket
        tokenizer.use_encoder(alone)
        for uri, convs in corpora.items():
            coded = [list(tokenize_utterances(conv, tokenizer)) for conv in convs]
            rows = [r for conv in label_batched(model, labeling, coded, 8) for r in conv]
            labels.setdefault(uri, {})[name] = rows
    report["labels"] = {
        uri: {name: _label_deltas(by["alone"], rows) for name, rows in by.items()}
        for uri, by in labels.items()
    }
    print_report(report, args.json)
    return 0


def _read(uri: str, model, limit: int | None) -> list[list]:
    from dpm_worker.corpus import read_manifest, to_rows
    from dpm_worker.worker import read_segments, segment_limit

    by_conv: dict[str, list] = {}
    for row in to_rows(read_manifest(uri, labels=model.vocab.labels)):
        by_conv.setdefault(row.conversation_id, []).append(row)
    out = []
    for rows in list(by_conv.values())[:limit]:
        segments, failed = read_segments(rows, max_segment_s=segment_limit(model, None))
        if failed:
            raise ConfigError(f"{len(failed)} row(s) of {uri} failed to read")
        out.append(segments)
    return out


def _mean_batch(mels: list[np.ndarray], batch: int, bucket: int) -> float:
    """Pieces per encoder call when ``mels`` are encoded together (waves under 30 s)."""
    from dpm_worker.speech.encoder import bucket_length

    sizes: dict[int, int] = {}
    for mel in mels:
        length = bucket_length(mel.shape[1], bucket)
        sizes[length] = sizes.get(length, 0) + 1
    calls = sum(-(-n // batch) for n in sizes.values())
    return round(len(mels) / calls, 2)


def _state_deltas(tokenizer, alone: list[np.ndarray], other: list[np.ndarray]) -> dict:
    from dpm_worker.speech.encoder_tokenizer import _pairs

    rel = np.array(
        [np.linalg.norm(b - a) / np.linalg.norm(a) for a, b in zip(alone, other, strict=True)]
    )
    pooled = np.array(
        [
            np.linalg.norm(b.mean(0) - a.mean(0)) / np.linalg.norm(a.mean(0))
            for a, b in zip(alone, other, strict=True)
        ]
    )
    norm = tokenizer.frame_norm.numpy()
    same = total = 0
    for a, b in zip(alone, other, strict=True):
        ua = tokenizer._units((_pairs(a) - norm[0]) / norm[1])
        ub = tokenizer._units((_pairs(b) - norm[0]) / norm[1])
        same += int((ua == ub).sum())
        total += len(ua)
    return {
        "rel_mean": round(float(rel.mean()), 5),
        "rel_p99": round(float(np.percentile(rel, 99)), 5),
        "rel_max": round(float(rel.max()), 5),
        "pooled_mean_rel_max": round(float(pooled.max()), 5),
        "units_same": round(same / total, 4),
    }


def _label_deltas(alone: list, other: list) -> dict:
    equal = sum(a.emotion == b.emotion for a, b in zip(alone, other, strict=True))
    dp = max(float(np.abs(a.probs - b.probs).max()) for a, b in zip(alone, other, strict=True))
    return {"utterances": len(alone), "labels_equal": equal, "max_abs_dprob": round(dp, 5)}
