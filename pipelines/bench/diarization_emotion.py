"""``dpm bench diarization --emotion``: what the diarizer is worth to emotion labeling.

The built two-speaker mono conversations are labeled by ``--model`` (``dpm`` mode, speaker-
scoped memory: the defaults) three times, on the same gold turns (times and gold emotions), with
only the ``speaker`` column changed: the gold speakers, the diarized speaker of each turn (the
hypothesis speaker that overlaps it most), and one ``unknown`` speaker (what a mono recording
without RTTM got before). UA differences are paired bootstraps over conversations.

Time: the same conversations as untimed mono recordings (one row each, VAD segmentation, as
``dpm label`` reads them) are read, tokenized and labeled with diarization off and on; the
ratio is what diarization adds to labeling time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from dpm_worker.audio import SegmentsConfig
from dpm_worker.corpus import SpeakerTurn
from dpm_worker.diarization import DiarizationConfig
from dpm_worker.memory import LabelingConfig
from pipelines.eval.results import compare, score

KINDS = ("diarized", "gold", "unknown")


def emotion_report(
    scored: list[dict[str, Any]], config: DiarizationConfig, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """UA per speaker source and the labeling-time overhead (the module docstring)."""
    from dpm_worker.model import load_model
    from pipelines.eval.corpus import label_conversations, load_conversations

    model = load_model(args.model)
    labeling = LabelingConfig()
    folder = out / "emotion"
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for kind in KINDS:
        path = folder / f"{kind}.jsonl"
        _write_rows(path, [row for s in scored for row in _rows(s, kind)])
        conversations = load_conversations(str(path), model)
        results[kind] = label_conversations(model, conversations, labeling, args.slots)
    labels = model.vocab.labels
    report: dict[str, Any] = {
        "model": model.model_id,
        "mode": labeling.mode,
        "scope": labeling.memory.scope,
        "ua": {k: score(r, labels, 10, 1000)["ua"] for k, r in results.items()},
        "diarized-gold": compare(results["diarized"], results["gold"], labels, 1000),
        "diarized-unknown": compare(results["diarized"], results["unknown"], labels, 1000),
    }
    report["time"] = _overhead(scored, config, model, labeling, args.slots, folder)
    return report


def _rows(s: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    rec = s["rec"]
    rows = []
    for i, (turn, emotion) in enumerate(zip(rec["ref"], rec["emotions"], strict=True)):
        speaker = {
            "gold": turn.speaker,
            "unknown": "unknown",
            "diarized": _most_overlap(turn, s["hyp"]),
        }[kind]
        rows.append(
            {
                "conversation_id": rec["id"],
                "utterance_index": i,
                "speaker": speaker,
                "audio_uri": rec["path"],
                "start_s": turn.start_s,
                "end_s": turn.end_s,
                "emotion": emotion,
            }
        )
    return rows


def _most_overlap(turn: SpeakerTurn, hyp: list[SpeakerTurn]) -> str:
    overlap: dict[str, float] = {}
    for h in hyp:
        shared = min(turn.end_s, h.end_s) - max(turn.start_s, h.start_s)
        if shared > 0:
            overlap[h.speaker] = overlap.get(h.speaker, 0.0) + shared
    return max(overlap, key=lambda k: overlap[k]) if overlap else "unknown"


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _overhead(
    scored: list[dict[str, Any]],
    config: DiarizationConfig,
    model: Any,
    labeling: LabelingConfig,
    slots: int,
    folder: Path,
) -> dict[str, float]:
    """Read + tokenize + label seconds of the untimed mono recordings, diarization off and on."""
    from pipelines.eval.corpus import label_conversations, load_conversations

    path = folder / "untimed.jsonl"
    _write_rows(
        path,
        [
            {
                "conversation_id": s["id"],
                "utterance_index": 0,
                "speaker": "unknown",
                "audio_uri": s["rec"]["path"],
                "emotion": None,
            }  # fmt: skip
            for s in scored
        ],
    )
    seconds = {}
    for name, enabled in (("off", False), ("on", True)):
        segments = SegmentsConfig(diarization=dataclasses.replace(config, enabled=enabled))
        start = time.perf_counter()
        conversations = load_conversations(str(path), model, segments=segments, require_gold=False)
        label_conversations(model, conversations, labeling, slots)
        seconds[name] = time.perf_counter() - start
    return {
        "label_s_without": seconds["off"],
        "label_s_with": seconds["on"],
        "added": seconds["on"] / seconds["off"] - 1.0,
    }
