"""``dpm augment``: augmented copies of a labelled corpus, for training (new voices, new lines).

    dpm augment --corpus M.parquet --out DIR [--copies 4] [--order keep|shuffled|inertia]
        [--seed S] [--no-clean]

Each copy of a conversation renders its speaker as another voice (pitch shift, tempo, gain)
through another line (reverberation, noise, telephone band and codec), drawn once per copy
(``dpm_worker/training/augment.py``). Writes ``DIR/audio/`` (16 kHz FLAC) and
``DIR/manifest.parquet``; the same arguments give the same bytes.
"""

from __future__ import annotations

import argparse
import sys

from dpm_worker.corpus import ChannelConfig
from dpm_worker.training import AugmentConfig, augment_corpus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="gold-labelled manifest (local or s3://)")
    parser.add_argument("--out", required=True, help="output folder (local or s3://)")
    parser.add_argument(
        "--copies", type=int, default=4, help="copies per conversation (%(default)s)"
    )
    parser.add_argument(
        "--order",
        choices=("keep", "shuffled", "inertia"),
        default="keep",
        help="each copy's dialogue order: the source's, or drawn again (%(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds every draw (%(default)s)")
    parser.add_argument(
        "--no-clean", action="store_true", help="do not also write the source conversations"
    )
    parser.add_argument(
        "--telephone-prob", type=float, default=0.3, help="telephone lines (%(default)s)"
    )
    parser.add_argument("--noise-prob", type=float, default=0.5, help="added noise (%(default)s)")
    parser.add_argument(
        "--reverb-prob", type=float, default=0.3, help="reverberation (%(default)s)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")
    parser.add_argument("--endpoint-url", default=None, help="S3 endpoint (else from env)")


def run(args: argparse.Namespace) -> int:
    config = AugmentConfig(
        copies=args.copies,
        keep_clean=not args.no_clean,
        order=args.order,
        channel=ChannelConfig(
            telephone_prob=args.telephone_prob,
            noise_prob=args.noise_prob,
            reverb_prob=args.reverb_prob,
        ),
    )
    done = [0, 0]

    def progress(conversation_id: str, written: int) -> None:
        done[0] += 1
        done[1] += written
        if not args.no_progress:
            print(
                f"augment: {conversation_id}: {done[0]} conversations, {done[1]} utterances",
                file=sys.stderr,
                flush=True,
            )

    table = augment_corpus(
        args.corpus, args.out, config, seed=args.seed, endpoint_url=args.endpoint_url,
        progress=progress,
    )  # fmt: skip
    conversations = len(set(table.column("conversation_id").to_pylist()))
    print(f"wrote {table.num_rows} utterances in {conversations} conversations to {args.out}")
    return 0
