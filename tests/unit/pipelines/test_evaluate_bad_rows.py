"""``dpm eval`` isolates bad clips as ``dpm label`` does: 50 clips, 5 of them bad (3 silent,
1 truncated, 1 not audio); 45 are scored, 5 reported with their reasons, exit code 3."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from dpm_worker.corpus import DEFAULT_LABELS
from dpm_worker.model import EmotionModel, save_model
from pipelines import cli
from pipelines.exit_codes import EXIT_PARTIAL

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (conversation, utterance) -> how the clip is broken
BAD = {(1, 2): "silence", (4, 0): "silence", (8, 4): "silence", (6, 3): "truncated", (9, 1): "text"}


def make_corpus(root) -> None:
    """10 conversations x 5 one-second clips (MELD's layout: one file per utterance)."""
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    (root / "clips").mkdir()
    rows = []
    for c in range(10):
        for i in range(5):
            kind = BAD.get((c, i))
            name = f"clips/c{c}_u{i}" + (".flac" if kind == "truncated" else ".wav")
            path = root / name
            wave = (0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t)).astype(np.float32)
            if kind == "silence":
                wave[:] = 0.0
            if kind == "text":
                path.write_text("transcript: not audio at all\n")
            else:
                sf.write(path, wave, 16000)
            if kind == "truncated":  # a valid header, then the stream stops a third of the way
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 3])
            rows.append(
                {
                    "conversation_id": f"c{c}",
                    "utterance_index": i,
                    "speaker": f"s{i % 2}",
                    "audio_uri": name,
                    "emotion": DEFAULT_LABELS[int(rng.integers(0, 4))],
                }
            )
    table = pa.Table.from_pylist(rows)
    table = table.set_column(1, "utterance_index", table["utterance_index"].cast(pa.int32()))
    pq.write_table(table, root / "manifest.parquet")


def test_eval_scores_the_good_clips_and_reports_the_bad(tmp_path) -> None:
    save_model(EmotionModel.random(seed=0), str(tmp_path / "model"))
    make_corpus(tmp_path)
    code = cli.main(
        [
            "eval",
            "--corpus",
            str(tmp_path / "manifest.parquet"),
            "--model",
            str(tmp_path / "model"),
            "--mode",
            "utterance,dpm",
            "--json",
            str(tmp_path / "out.json"),
            "--predictions",
            str(tmp_path / "pred.parquet"),
            "--bootstrap",
            "50",
        ]
    )
    assert code == EXIT_PARTIAL
    report = json.loads((tmp_path / "out.json").read_text())
    assert {m: b["n"] for m, b in report["modes"].items()} == {"utterance": 45, "dpm": 45}
    failed = report["failed"]
    assert failed["rows"] == 5 and failed["conversations"] == 5
    assert failed["by_type"] == {"AudioError": 5}
    reasons = {(e["conversation_id"], e["utterance_index"]): e for e in failed["errors"]}
    assert set(reasons) == {(f"c{c}", i) for c, i in BAD}
    for (c, i), kind in BAD.items():
        error = reasons[(f"c{c}", i)]
        assert error["input_uri"].endswith(
            f"c{c}_u{i}" + (".flac" if kind == "truncated" else ".wav")
        )
        expected = {"silence": "silence", "truncated": "truncated", "text": "unrecognised"}[kind]
        assert expected in error["message"], error
    pred = pq.read_table(tmp_path / "pred.parquet").to_pandas()
    assert len(pred) == 2 * 50
    bad = pred[pred["error"].notna()]
    assert len(bad) == 2 * 5 and bad["pred"].isna().all() and bad["p_neutral"].isna().all()
    assert set(zip(bad["conversation_id"], bad["utterance_index"], strict=True)) == {
        (f"c{c}", i) for c, i in BAD
    }
    good = pred[pred["error"].isna()]
    assert good["pred"].notna().all() and np.allclose(
        good[[f"p_{x}" for x in DEFAULT_LABELS]].sum(axis=1), 1.0, atol=1e-5
    )
