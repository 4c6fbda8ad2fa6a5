"""``dpm bench diarization``: DER of the mono diarizer on three kinds of recordings, its speed,
and (``--emotion``) what it is worth to emotion labeling.

Sets (each optional; JSON keys in brackets):

- [ravdess], [emovo]: two-speaker mono conversations built from real actors
  (``diarization_corpus.py``: one per pair of speakers, pauses and some overlap between
  turns), reported apart for same-gender and mixed-gender pairs; with ``--single`` also one
  conversation of each speaker alone (group ``single``: one speaker must be found).
- [ami]: the AMI meeting excerpts of a folder of ``NAME.flac`` + ``NAME.rttm`` (the project's
  fixtures: ``tests/fixtures/real_speech``).
- [synth]: synthetic stereo conversations (``dpm synth``'s generator), mixed down to mono;
  the reference is the manifest's turns.

DER (missed speech, false alarm, speaker confusion, over the reference speech) is computed by
``pyannote.metrics`` (the field's implementation) when it is installed, else by
``dpm_worker.diarization.diarization_error`` (the JSON's ``der_engine`` says which), with a
collar of ``--collar`` seconds on each side of each reference boundary (NIST's convention;
pyannote's ``collar`` is the whole width, twice this) and also without a collar; overlapped
speech is scored. Rates are pooled over a group's recordings (total errors / total speech).
Speed: audio seconds per second of diarization (the VAD excluded, it runs without
diarization too), on one torch thread.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dpm_worker.audio import SAMPLE_RATE, detect_speech, read_recording
from dpm_worker.corpus import SpeakerTurn, format_rttm, read_rttm
from dpm_worker.diarization import (
    DiarizationConfig,
    diarization_error,
    diarize,
    load_speaker_encoder,
)
from dpm_worker.errors import ConfigError
from pipelines.bench import diarization_corpus as built
from pipelines.bench.command import print_report

COMPONENTS = ("missed", "false_alarm", "confusion", "total")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ravdess", default=None, help="RAVDESS folder (Actor_01..Actor_24)")
    parser.add_argument("--actors", default="19-24", help="RAVDESS actors first-last (%(default)s)")
    parser.add_argument("--emovo", default=None, help="EMOVO folder (f1 f2 f3 m1 m2 m3)")
    parser.add_argument(
        "--single",
        action="store_true",
        help="also one conversation of each speaker alone (group 'single'): tuning on "
        "RAVDESS actors 1-8 (--actors 1-8) weighs these as much as the pairs",
    )
    parser.add_argument("--ami", default=None, help="folder of NAME.flac + NAME.rttm excerpts")
    parser.add_argument("--synth", type=int, default=0, help="synthetic conversations (0: none)")
    parser.add_argument("--synth-utterances", type=int, default=12, help="per conversation")
    parser.add_argument("--turns", type=int, default=12, help="turns per built conversation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--collar", type=float, default=0.25, help="seconds each side")
    parser.add_argument("--max-speakers", type=int, default=None, help="diarization.max_speakers")
    parser.add_argument("--out", default=None, help="folder for the mixes and RTTMs (temp)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (%(default)s)")
    parser.add_argument(
        "--emotion",
        action="store_true",
        help="also label the built conversations with --model: UA with diarized speakers, "
        "gold speakers and one unknown speaker, and diarization's share of labeling time",
    )
    parser.add_argument("--model", default=None, help="model folder (default: packaged)")
    parser.add_argument("--slots", type=int, default=8, help="conversations labeled at once")
    parser.add_argument("--json", default=None, help="also write the JSON here")


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads < 1 or args.collar < 0:
        raise ConfigError(
            f"--threads must be >= 1 and --collar >= 0, got {args.threads} and {args.collar}"
        )
    config = DiarizationConfig(
        enabled=True, **({"max_speakers": args.max_speakers} if args.max_speakers else {})
    )
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dpm-diar-") as scratch:
        out = Path(args.out or scratch)
        recordings = list(_recordings(args, out))
        if not recordings:
            raise ConfigError("no set chosen: give --ravdess, --emovo, --ami and/or --synth")
        load_speaker_encoder()  # loaded (and hash-checked) once, outside the timings
        scored = [_score(rec, config, args.collar, out) for rec in recordings]
        report: dict[str, Any] = {
            "config": vars(args) | {"diarization": config.__dict__},
            "der_engine": "pyannote.metrics" if _pyannote() else "dpm_worker.diarization",
            "collar_each_side_s": args.collar,
            "sets": _tables(scored),
            "speed": _speed(scored),
            "recordings": [
                {k: v for k, v in s.items() if k not in ("hyp", "ref", "rec")} for s in scored
            ],
        }
        convs = [s for s in scored if s["rec"].get("emotions")]
        if args.emotion and convs:
            from pipelines.bench.diarization_emotion import emotion_report

            report["emotion"] = emotion_report(convs, config, args, out)
    print_report(report, args.json)
    return 0


def _recordings(args: argparse.Namespace, out: Path) -> Iterator[dict[str, Any]]:
    """Each recording: set, group, id, path, samples, reference turns (and emotions)."""
    clips = built.ClipCache()
    speakers = []
    if args.ravdess:
        first, last = (int(x) for x in args.actors.split("-"))
        speakers.append(("ravdess", built.ravdess_speakers(args.ravdess, range(first, last + 1))))
    if args.emovo:
        speakers.append(("emovo", built.emovo_speakers(args.emovo)))
    for name, people in speakers:
        convs = built.build_conversations(name, people, clips, turns=args.turns, seed=args.seed)
        if args.single:
            alone = built.build_single_conversations(
                name, people, clips, turns=args.turns, seed=args.seed
            )
            convs = itertools.chain(convs, alone)
        for conv in convs:
            path = built.write_conversation(conv, out / name)
            yield {
                "set": name, "group": conv.pair, "id": conv.conversation_id, "path": path,
                "samples": conv.samples, "ref": conv.turns, "emotions": conv.emotions,
            }  # fmt: skip
    if args.ami:
        for flac in sorted(Path(args.ami).glob("*.flac")):
            samples = read_recording(str(flac)).samples.mean(axis=0)
            ref = read_rttm(str(flac.with_suffix(".rttm")))
            yield {"set": "ami", "group": "all", "id": flac.stem, "path": str(flac),
                   "samples": samples, "ref": ref}  # fmt: skip
    if args.synth:
        yield from _synth_recordings(args, out / "synth")


def _synth_recordings(args: argparse.Namespace, folder: Path) -> Iterator[dict[str, Any]]:
    from dpm_worker.audio import write_audio
    from dpm_worker.corpus import SynthConfig, generate_corpus, read_manifest, to_rows

    n = args.synth_utterances
    synth = SynthConfig(
        conversations=args.synth, seed=args.seed, min_utterances=n, max_utterances=n
    )
    generate_corpus(str(folder), synth)
    by_audio: dict[str, list] = {}
    for row in to_rows(read_manifest(str(folder / "manifest.parquet"))):
        by_audio.setdefault(row.audio_uri, []).append(row)
    for uri, rows in by_audio.items():
        stem = Path(uri).stem
        mono = read_recording(uri).samples.mean(axis=0).astype(np.float32)
        path = folder / f"{stem}.mono.wav"
        write_audio(str(path), mono, SAMPLE_RATE)
        ref = [SpeakerTurn(stem, r.speaker, float(r.start_s), float(r.end_s)) for r in rows]
        yield {"set": "synth", "group": "all", "id": stem, "path": str(path),
               "samples": mono, "ref": ref}  # fmt: skip


def _score(rec: dict[str, Any], config: DiarizationConfig, collar: float, out: Path):
    samples = rec["samples"]
    duration = samples.shape[0] / SAMPLE_RATE
    t0 = time.perf_counter()
    regions = detect_speech(samples, SAMPLE_RATE)
    t1 = time.perf_counter()
    hyp = diarize(samples, regions, config, rec["id"])
    t2 = time.perf_counter()
    (out / "hyp").mkdir(parents=True, exist_ok=True)
    (out / "hyp" / f"{rec['id']}.rttm").write_text(format_rttm(hyp))
    return {
        "set": rec["set"], "group": rec["group"], "id": rec["id"], "duration_s": duration,
        "vad_s": t1 - t0, "diarize_s": t2 - t1,
        "speakers_ref": len({t.speaker for t in rec["ref"]}),
        "speakers_hyp": len({t.speaker for t in hyp}),
        "der": _der(rec["ref"], hyp, duration, collar),
        "der_no_collar": _der(rec["ref"], hyp, duration, 0.0),
        "der_own": diarization_error(rec["ref"], hyp, duration_s=duration, collar_s=collar),
        "hyp": hyp, "ref": rec["ref"], "rec": rec,
    }  # fmt: skip


def _pyannote() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyannote.metrics") is not None


def _der(
    ref: list[SpeakerTurn], hyp: list[SpeakerTurn], duration: float, collar: float
) -> dict[str, float]:
    if not _pyannote():
        return diarization_error(ref, hyp, duration_s=duration, collar_s=collar)
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    def annotation(turns: list[SpeakerTurn]) -> Annotation:
        found = Annotation()
        for i, turn in enumerate(turns):
            found[Segment(turn.start_s, turn.end_s), i] = turn.speaker
        return found

    metric = DiarizationErrorRate(collar=2 * collar, skip_overlap=False)
    uem = Timeline([Segment(0.0, duration)])
    parts = metric(annotation(ref), annotation(hyp), uem=uem, detailed=True)
    return {
        "missed": parts["missed detection"], "false_alarm": parts["false alarm"],
        "confusion": parts["confusion"], "total": parts["total"],
        "der": parts["diarization error rate"],
    }  # fmt: skip


def _pooled(items: list[dict[str, Any]], key: str) -> dict[str, float]:
    sums = {c: float(sum(i[key][c] for i in items)) for c in COMPONENTS}
    total = sums["total"] or 1.0
    errors = sums["missed"] + sums["false_alarm"] + sums["confusion"]
    return {"der": errors / total} | {c: sums[c] / total for c in COMPONENTS[:3]}


def _tables(scored: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in dict.fromkeys(s["set"] for s in scored):
        items = [s for s in scored if s["set"] == name]
        groups = {"all": items} | {
            g: [s for s in items if s["group"] == g]
            for g in dict.fromkeys(s["group"] for s in items)
            if g != "all"
        }
        out[name] = {
            g: {
                "n": len(members),
                "hours": sum(m["duration_s"] for m in members) / 3600,
                "der": _pooled(members, "der"),
                "der_no_collar": _pooled(members, "der_no_collar"),
                "speaker_count_correct": float(
                    np.mean([m["speakers_ref"] == m["speakers_hyp"] for m in members])
                ),
            }
            for g, members in groups.items()
        }
    return out


def _speed(scored: list[dict[str, Any]]) -> dict[str, float]:
    audio = sum(s["duration_s"] for s in scored)
    diar = sum(s["diarize_s"] for s in scored)
    vad = sum(s["vad_s"] for s in scored)
    return {
        "audio_s": audio,
        "diarize_s": diar,
        "vad_s": vad,
        "x_realtime": audio / diar if diar > 0 else float("inf"),
        "x_realtime_with_vad": audio / (diar + vad) if diar + vad > 0 else float("inf"),
    }
