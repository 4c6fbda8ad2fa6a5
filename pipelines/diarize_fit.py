"""``python -m pipelines.diarize_fit --ravdess ROOT``: fit the diarizer's within-speaker whitening.

Embeds every 4-class clip of RAVDESS actors 09-18 (trimmed to its speech by the VAD) in chunks
exactly as ``dpm_worker.diarization.diarize`` does, and writes the whitening of their
within-speaker covariance (``dpm_worker.diarization.whitening``) to the shipped asset.
Deterministic. Actors 01-08 are where the diarizer's thresholds are chosen (``dpm bench
diarization --actors 1-8 --single``); never give it the benchmark's speakers (RAVDESS actors
19-24, EMOVO).
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from dpm_worker.diarization import DiarizationConfig, chunk_embeddings, fit_whitening
from dpm_worker.diarization.whitening import WHITENING_PATH
from pipelines.bench.diarization_corpus import ClipCache, ravdess_speakers

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.diarize_fit", description=__doc__)
    parser.add_argument("--ravdess", required=True, help="folder of Actor_01..Actor_24")
    parser.add_argument("--actors", default="9-18", help="first-last actor (%(default)s)")
    parser.add_argument("--shrink", type=float, default=0.7, help="(%(default)s)")
    parser.add_argument("--out", default=str(WHITENING_PATH), help="(%(default)s)")
    args = parser.parse_args(argv)
    first, last = (int(x) for x in args.actors.split("-"))
    config = DiarizationConfig()
    clips = ClipCache()
    embeddings, speakers = [], []
    for speaker in ravdess_speakers(args.ravdess, range(first, last + 1)):
        for path, _ in speaker.clips:
            samples = clips.get(path)
            found = chunk_embeddings(samples, [(0.0, samples.shape[0] / 16000)], config)
            embeddings.append(found)
            speakers += [speaker.name] * found.shape[0]
        log.info("%s: %d chunks so far", speaker.name, len(speakers))
    mean, transform = fit_whitening(np.concatenate(embeddings), np.array(speakers), args.shrink)
    with open(args.out, "wb") as f:  # np.savez would append ".npz" to a path without it
        np.savez(f, mean=mean, transform=transform)
    print(f"wrote {args.out}: whitening of {len(speakers)} chunks of {len(set(speakers))} speakers")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
