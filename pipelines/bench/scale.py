"""``dpm bench scale``: the driver's memory while it schedules many short conversations.

What it measures: the peak RSS of the driver process while the real scheduler (manifest
streaming, back-pressure, results, resume bookkeeping, ``_SUCCESS`` counts) pushes N
conversations through Ray actors, for a small and a large N in one run. The actors are a
scheduling-only stand-in (``NullWorker``): they read no audio and load no model, and write
each conversation's Parquet file with uniform probabilities, so the numbers are the driver's
cost alone. A bounded driver shows a large/small RSS ratio near 1 although the manifest is
10x longer.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from dpm_worker.corpus import UtteranceRow
from dpm_worker.tables import RunTables
from dpm_worker.utterance import LabeledUtterance, Utterance
from dpm_worker.worker import WorkerSettings

log = logging.getLogger("dpm.bench")


class NullWorker:
    """A scheduling-only worker: same interface as ConversationWorker, no audio, no model."""

    def __init__(self, settings: WorkerSettings, record: Any = None) -> None:
        self.settings = settings  # record: the metrics callback, unused (nothing is measured)
        self.tables = RunTables(settings.output_uri, settings.run, settings.endpoint_url)

    def describe(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "model_id": "null", "device": "none"}

    def label(
        self,
        conversation_id: str,
        rows: Sequence[UtteranceRow],
        next_conversation: Any = None,
    ) -> dict[str, Any]:
        labels = self.settings.run.labels
        uniform = np.full(len(labels), 1.0 / len(labels), dtype=np.float32)
        utterances = [
            LabeledUtterance(
                utterance=Utterance(
                    conversation_id=r.conversation_id,
                    utterance_index=r.utterance_index,
                    speaker=r.speaker,
                    start_s=r.start_s,
                    end_s=r.end_s,
                    emotion=r.emotion,
                    audio_uri=r.audio_uri,
                ),
                emotion=labels[0],
                confidence=float(uniform[0]),
                probs=uniform,
            )
            for r in rows
        ]
        self.tables.write_emotions(conversation_id, utterances, dt.datetime.now(dt.UTC))
        return {
            "conversation_id": conversation_id,
            "status": "labeled",
            "rows": len(rows),
            "utterances": len(rows),
            "error_rows": 0,
            "audio_s": 0.0,
            "timings": {},
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conversations", type=int, default=5000, help="large manifest size")
    parser.add_argument("--baseline", type=int, default=500, help="small manifest size")
    parser.add_argument("--utterances", type=int, default=3, help="utterances per conversation")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=0.5)
    parser.add_argument("--address", help="Ray cluster (default: embedded local Ray)")
    parser.add_argument("--workdir", help="where manifests and tables go (default: a temp dir)")


def write_synthetic_manifest(path: str, conversations: int, utterances: int) -> None:
    """A manifest of many short conversations (the audio is never read by NullWorker)."""
    n = conversations * utterances
    conv = [f"call-{i // utterances:07d}" for i in range(n)]
    index = [i % utterances for i in range(n)]
    table = pa.table(
        {
            "conversation_id": conv,
            "utterance_index": pa.array(index, pa.int32()),
            "speaker": ["A" if i % 2 == 0 else "B" for i in index],
            "audio_uri": [f"audio/{c}.flac" for c in conv],
            "start_s": [2.0 * i for i in index],
            "end_s": [2.0 * i + 1.5 for i in index],
            "emotion": ["neutral"] * n,
        }
    )
    pq.write_table(table, path, row_group_size=10_000)


class PeakRss:
    """Samples this process's RSS in a background thread (peak over a window)."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._proc = psutil.Process()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.every_s)

    def __enter__(self) -> PeakRss:
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(workdir: str, conversations: int, args: argparse.Namespace, model: str) -> dict:
    from pipelines.label import load_config, prepare

    manifest = os.path.join(workdir, f"manifest-{conversations}.parquet")
    write_synthetic_manifest(manifest, conversations, args.utterances)
    config = load_config(
        None,
        {
            "input": manifest,
            "output": os.path.join(workdir, f"out-{conversations}"),
            "model": model,
            "address": args.address,
            "actors": args.actors,
            "cpus_per_actor": args.cpus_per_actor,
        },
        ["progress_interval_s=10", "labeling.mode=window"],
    )
    start = time.monotonic()
    with PeakRss() as rss:
        before = rss.peak
        job = prepare(config, worker_class=NullWorker)
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON report
            code = job.execute()
    wall = time.monotonic() - start
    return {
        "conversations": conversations,
        "rows": conversations * args.utterances,
        "exit_code": code,
        "driver_rss_before_mb": round(before / 2**20, 1),
        "driver_peak_rss_mb": round(rss.peak / 2**20, 1),
        "driver_rss_growth_mb": round((rss.peak - before) / 2**20, 1),
        "wall_s": round(wall, 2),
        "schedule_s": round(job.timings.get("schedule_s", 0.0), 2),
        "conversations_per_s": round(
            conversations / max(job.timings.get("schedule_s", 1), 1e-6), 1
        ),
    }


def run(args: argparse.Namespace) -> int:
    from dpm_worker.model import EmotionModel, save_model
    from pipelines.label import connect

    workdir = args.workdir or tempfile.mkdtemp(prefix="dpm-bench-scale-")
    model = os.path.join(workdir, "tiny-model")  # only its metadata is read (driver preflight)
    if not os.path.exists(model):
        save_model(EmotionModel.random(seed=0), model)
    connect(args.address)
    small = measure(workdir, args.baseline, args, model)
    large = measure(workdir, args.conversations, args, model)
    report = {
        "benchmark": "scale",
        "measures": "driver peak RSS while scheduling N conversations through Ray actors; the "
        "actors are a scheduling-only NullWorker (no audio, no model; writes uniform rows)",
        "small": small,
        "large": large,
        "manifest_ratio": round(large["rows"] / small["rows"], 2),
        "peak_rss_ratio_large_over_small": round(
            large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"], 3
        ),
        "rss_growth_ratio_large_over_small": round(
            large["driver_rss_growth_mb"] / max(small["driver_rss_growth_mb"], 1.0), 3
        ),
        "workdir": workdir,
    }
    print(json.dumps(report, indent=2))
    return 0 if small["exit_code"] == 0 and large["exit_code"] == 0 else 1
