"""``dpm bench encoder_batch`` on the shipped model and a tiny real-speech corpus: the report's
shape, and equal-length batches that move nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.cli import main

AMI = Path(__file__).parents[2] / "fixtures" / "real_speech" / "dev00.flac"


def test_bench_reports_speed_states_and_labels(tmp_path):
    rows = [
        {"conversation_id": "ami", "utterance_index": i, "speaker": "ab"[i % 2],
         "audio_uri": str(AMI), "start_s": float(start), "end_s": float(start + length),
         "emotion": "neutral"}
        for i, (start, length) in enumerate([(0, 2), (3, 2), (6, 2.7), (10, 2.8)])
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    out = tmp_path / "b.json"
    code = main(["bench", "encoder_batch", "--corpus", str(tmp_path / "m.parquet"),
                 "--batches", "2", "--buckets", "2,50", "--rounds", "1", "--json", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["utterances"] == 4
    assert set(report["encode"]) == {"alone", "batch2_bucket2", "batch2_bucket50"}
    assert report["encode"]["alone"]["speedup"] == 1.0
    exact = report["states"]["bucket2"]
    assert exact["rel_max"] == 0.0 and exact["units_same"] == 1.0
    assert exact["mean_batch"] == 1.33  # the two 2 s turns share one call: 4 pieces, 3 calls
    (labels,) = report["labels"].values()
    assert labels["bucket2"] == {"utterances": 4, "labels_equal": 4, "max_abs_dprob": 0.0}
    padded = report["states"]["bucket50"]  # 2.7 s padded to 2.8 s: its states move
    assert padded["mean_batch"] == 2 and padded["rel_max"] > 0.01
