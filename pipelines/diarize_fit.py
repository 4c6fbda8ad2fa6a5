"""``python -m pipelines.diarize_fit --ravdess ROOT``: fit the diarizer's nuisance directions.

Embeds every 4-class clip of RAVDESS actors 01-18 (trimmed to its speech by the VAD) in chunks
exactly as ``dpm_worker.diarization.diarize`` does, and writes the top within-speaker
directions (``dpm_worker.diarization.nuisance``) to the shipped asset. Deterministic.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from dpm_worker.diarization import DiarizationConfig, chunk_embeddings, fit_nuisance
from dpm_worker.diarization.nuisance import NUISANCE_PATH
from pipelines.bench.diarization_corpus import ClipCache, ravdess_speakers

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.diarize_fit", description=__doc__)
    parser.add_argument("--ravdess", required=True, help="folder of Actor_01..Actor_24")
    parser.add_argument("--actors", default="1-18", help="first-last actor (%(default)s)")
    parser.add_argument("--dims", type=int, default=10, help="directions kept (%(default)s)")
    parser.add_argument("--out", default=str(NUISANCE_PATH), help="(%(default)s)")
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
    vectors = fit_nuisance(np.concatenate(embeddings), np.array(speakers), args.dims)
    np.save(args.out, vectors)
    print(f"wrote {args.out}: {vectors.shape} from {len(speakers)} chunks")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
