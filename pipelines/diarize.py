"""``dpm diarize --input M|DIR --out DIR``: who speaks when in mono recordings, as RTTM files.

``--input`` is a manifest (its rows without times and without ``rttm_uri``: the recordings
``dpm label`` would segment) or a folder of recordings (every audio file under it). Each
recording's channels are mixed to mono, segmented by the VAD and diarized exactly as
``dpm label`` does with ``segments.diarization.enabled=true``; its turns go to
``OUT/<path relative to the folder, or the file name>.rttm`` (file id: the recording's name,
speakers ``spk0``, ``spk1``, ... in order of first speech). Copied beside the recordings as
sidecars (``NAME.rttm`` next to ``NAME.wav``), corrected or not, they are read back by
``dpm manifest files`` and ``dpm label`` instead of diarizing again.

One JSON line per recording is printed (speakers, turns, speech and audio seconds); a
recording that cannot be read is reported and skipped (exit code 3).
"""

from __future__ import annotations

import argparse
import json
import posixpath
import time
from pathlib import Path

from dpm_worker.audio import SAMPLE_RATE, detect_speech, read_recording
from dpm_worker.corpus import format_rttm, is_audio_name
from dpm_worker.diarization import DiarizationConfig, diarize
from dpm_worker.errors import BadInputError, ConfigError
from pipelines.exit_codes import EXIT_OK, EXIT_PARTIAL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="manifest file or folder of recordings")
    parser.add_argument("--out", required=True, help="folder for the RTTM files")
    parser.add_argument(
        "--max-speakers", type=int, default=None, help="most speakers per recording (4)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (%(default)s)")


def recordings(source: str) -> list[tuple[str, str]]:
    """``(audio_uri, rttm path relative to --out)`` of each recording to diarize."""
    folder = Path(source)
    if folder.is_dir():
        found = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file()
            and is_audio_name(p.name)
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
        return [(str(p), str(p.relative_to(folder).with_suffix(".rttm"))) for p in found]
    from dpm_worker.corpus import read_manifest, to_rows

    uris = dict.fromkeys(
        row.audio_uri
        for row in to_rows(read_manifest(source))
        if row.start_s is None and row.end_s is None and not row.rttm_uri
    )
    return [(uri, posixpath.splitext(posixpath.basename(uri))[0] + ".rttm") for uri in uris]


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    config = DiarizationConfig(
        enabled=True, **({"max_speakers": args.max_speakers} if args.max_speakers else {})
    )
    todo = recordings(args.input)
    if not todo:
        raise ConfigError(f"no recording to diarize in {args.input!r}")
    failed = 0
    for uri, relative in todo:
        start = time.perf_counter()
        try:
            samples = read_recording(uri).samples.mean(axis=0)
        except BadInputError as exc:
            failed += 1
            print(json.dumps({"audio_uri": uri, "error": str(exc)}))
            continue
        name = posixpath.splitext(posixpath.basename(uri))[0]
        turns = diarize(samples, detect_speech(samples, SAMPLE_RATE), config, name)
        target = Path(args.out) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(format_rttm(turns))
        summary = {
            "audio_uri": uri,
            "rttm": str(target),
            "speakers": len({t.speaker for t in turns}),
            "turns": len(turns),
            "speech_s": round(sum(t.end_s - t.start_s for t in turns), 3),
            "audio_s": round(samples.shape[0] / SAMPLE_RATE, 3),
            "seconds": round(time.perf_counter() - start, 3),
        }
        print(json.dumps(summary))
    return EXIT_PARTIAL if failed else EXIT_OK
