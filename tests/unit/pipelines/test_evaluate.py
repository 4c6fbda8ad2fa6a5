"""``dpm eval`` end to end on a tiny random model and a small hand-made stereo corpus."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from dpm_worker.corpus import DEFAULT_LABELS
from dpm_worker.metrics import expected_calibration_error
from dpm_worker.model import EmotionModel, apply_temperature, load_model, save_model
from pipelines import cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved tiny random model and 3 conversations x 6 utterances (stereo tones)."""
    root = tmp_path_factory.mktemp("eval")
    save_model(EmotionModel.random(seed=0), str(root / "model"))
    rng = np.random.default_rng(0)
    rows = []
    (root / "audio").mkdir()
    for c in range(3):
        n, turn = 6, 1.0
        t = np.arange(int(16000 * turn)) / 16000
        wave = np.zeros((int(16000 * turn * n), 2), dtype=np.float32)
        for i in range(n):
            f0 = rng.uniform(100, 300)
            wave[int(i * 16000 * turn) : int((i + 1) * 16000 * turn), i % 2] = 0.3 * np.sin(
                2 * np.pi * f0 * t
            )
            rows.append(
                {
                    "conversation_id": f"conv_{c}",
                    "utterance_index": i,
                    "speaker": f"s{i % 2}",
                    "audio_uri": f"audio/conv_{c}.wav",
                    "start_s": i * turn + 0.05,
                    "end_s": (i + 1) * turn - 0.05,
                    "channel": i % 2,
                    "emotion": DEFAULT_LABELS[int(rng.integers(0, 4))],
                    "expressive": bool(i % 3 == 0),
                    "engine": "flite" if c == 2 else f"e{i % 2}",
                }
            )
        sf.write(root / "audio" / f"conv_{c}.wav", wave, 16000)
    table = pa.Table.from_pylist(rows)
    table = table.set_column(1, "utterance_index", table["utterance_index"].cast(pa.int32()))
    table = table.set_column(6, "channel", table["channel"].cast(pa.int16()))
    pq.write_table(table, root / "manifest.parquet")
    return root


def run_eval(root, *extra: str) -> dict:
    out = root / "out.json"
    code = cli.main(
        [
            "eval",
            "--corpus",
            str(root / "manifest.parquet"),
            "--model",
            str(root / "model"),
            "--window-tokens",
            "32",
            "--json",
            str(out),
            "--bootstrap",
            "200",
            "labeling.memory.lr=1e-2",
            *extra,
        ]
    )
    assert code == 0
    return json.loads(out.read_text())


def test_eval_writes_the_json_contract_predictions_and_plots(setup) -> None:
    root = setup
    report = run_eval(
        root,
        "--predictions",
        str(root / "pred.parquet"),
        "--plots",
        str(root / "plots"),
        "--position-bin",
        "3",
    )
    assert set(report["modes"]) == {"utterance", "window", "full", "dpm"}
    assert report["model"] == "dpm-random-0"
    for block in report["modes"].values():
        assert block["n"] == 18
        for key in ("wa", "ua", "wf1", "utterances_per_second"):
            assert isinstance(block[key], float)
        assert set(block["per_class"]) == set(DEFAULT_LABELS)
        assert 0 <= block["expressive_accuracy"] <= 1 and 0 <= block["subtle_accuracy"] <= 1
        assert [(r["from"], r["to"]) for r in block["by_position"]] == [(0, 3), (3, 6)]
        assert all(r["ms_per_utterance"] > 0 for r in block["by_position"])
        assert block["ua_ci"][0] <= block["ua"] <= block["ua_ci"][1]
        assert 0 <= block["ece"] <= 1 and 0.25 <= block["mean_confidence"] <= 1
        assert block["ece_ci"][0] <= block["ece"] + 1e-12 <= block["ece_ci"][1] + 2e-12
    diff = report["comparisons"]["dpm-window"]
    assert diff["lo"] <= diff["ua_diff"] <= diff["hi"]
    assert diff["ua_diff"] == pytest.approx(
        report["modes"]["dpm"]["ua"] - report["modes"]["window"]["ua"]
    )
    table = pq.read_table(root / "pred.parquet")
    assert table.num_rows == 4 * 18
    assert {"mode", "conversation_id", "utterance_index", "speaker", "gold", "pred"} <= set(
        table.column_names
    )
    assert {f"p_{x}" for x in DEFAULT_LABELS} <= set(table.column_names)
    probs = np.stack([table[f"p_{x}"].to_numpy() for x in DEFAULT_LABELS], axis=1)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # the JSON's ECE is the top label's, 10 bins, over the predictions written
    dpm = table.to_pandas()["mode"].to_numpy() == "dpm"
    gold = [DEFAULT_LABELS.index(g) for g in np.asarray(table["gold"].to_pylist())[dpm]]
    ece = expected_calibration_error(probs[dpm], gold)
    assert report["modes"]["dpm"]["ece"] == pytest.approx(ece, abs=1e-6)
    assert (root / "plots" / "confusion.png").stat().st_size > 1000
    assert (root / "plots" / "by_position.png").stat().st_size > 1000


def test_eval_is_deterministic_and_limits_conversations(setup) -> None:
    first = run_eval(setup, "--mode", "dpm", "--limit-conversations", "2")
    second = run_eval(setup, "--mode", "dpm", "--limit-conversations", "2")
    assert first["modes"]["dpm"]["n"] == 12 and first["n_conversations"] == 2
    assert first["modes"]["dpm"]["ua"] == second["modes"]["dpm"]["ua"]
    assert first["modes"]["dpm"]["confusion"] == second["modes"]["dpm"]["confusion"]


def test_eval_reports_each_value_of_the_group_by_columns(setup) -> None:
    report = run_eval(setup, "--mode", "utterance,window", "--group-by", "engine,speaker")
    assert set(report["groups"]) == {"engine", "speaker"}
    assert set(report["groups"]["speaker"]) == {"s0", "s1"}
    groups = report["groups"]["engine"]
    assert set(groups) == {"e0", "e1", "flite"}
    assert [groups[g]["n_conversations"] for g in ("e0", "e1", "flite")] == [2, 2, 1]
    for mode in ("utterance", "window"):
        whole = report["modes"][mode]
        parts = [groups[g]["modes"][mode] for g in groups]
        assert [p["n"] for p in parts] == [6, 6, 6]
        assert sum(p["wa"] * p["n"] for p in parts) == pytest.approx(whole["wa"] * whole["n"])
        assert np.sum([p["confusion"] for p in parts], axis=0).tolist() == whole["confusion"]
    diff = groups["flite"]["comparisons"]["window-utterance"]
    flite = groups["flite"]["modes"]
    assert diff["ua_diff"] == pytest.approx(flite["window"]["ua"] - flite["utterance"]["ua"])


def test_eval_names_the_backbone_and_memory_dtypes(setup) -> None:
    fp32 = run_eval(setup, "--mode", "dpm", "--limit-conversations", "1")
    bf16 = run_eval(setup, "--mode", "dpm", "--limit-conversations", "1", "--dtype", "bfloat16")
    assert (fp32["dtype"], fp32["memory_dtype"]) == ("float32", "float32")
    assert (bf16["dtype"], bf16["memory_dtype"]) == ("bfloat16", "float32")
    assert bf16["modes"]["dpm"]["n"] == 6


def test_eval_slots_label_as_one_at_a_time(setup) -> None:
    one = setup / "one.parquet"
    three = setup / "three.parquet"
    run_eval(setup, "--mode", "window,dpm", "--predictions", str(one))
    report = run_eval(setup, "--mode", "window,dpm", "--predictions", str(three), "--slots", "3")
    assert report["slots"] == 3
    a, b = (pq.read_table(p).to_pandas() for p in (one, three))
    assert list(a["pred"]) == list(b["pred"]) and len(a) == 2 * 18
    cols = [f"p_{x}" for x in DEFAULT_LABELS]
    assert np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max() <= 1e-5


def test_eval_rejects_bad_arguments(setup, tmp_path) -> None:
    args = ["eval", "--corpus", str(setup / "manifest.parquet"), "--json", str(tmp_path / "x")]
    assert cli.main([*args, "--mode", "dpm,psychic"]) == 2
    assert cli.main([*args, "--slots", "0"]) == 2
    assert cli.main([*args, "--model", str(setup / "model"), "labeling.memory.lr=-1"]) == 2
    assert cli.main([*args, "--model", str(tmp_path / "missing")]) == 2
    model = ["--model", str(setup / "model")]
    assert cli.main([*args, *model, "--mode", "utterance", "--group-by", "no_such"]) == 2


def test_bench_memory_reports_both_ends_per_mode(setup, capsys) -> None:
    args = ["bench", "memory", "--model", str(setup / "model"), "--tokens", "random"]
    assert cli.main([*args, "--utterances", "40", "--window-tokens", "64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["modes"]) == {"utterance", "window", "full", "dpm"}
    for block in report["modes"].values():
        for key in ("ms_first20", "ms_last20", "rss_mb_first20", "rss_mb_last20"):
            assert block[key] > 0
    # token counts, not timings: dpm/window context is capped, full keeps growing
    assert report["modes"]["dpm"]["context_last20"] <= 64 + 127
    assert report["modes"]["full"]["context_last20"] > report["modes"]["full"]["context_first20"]
    assert cli.main([*args, "--utterances", "10"]) == 2


def test_calibrate_fits_a_temperature_that_eval_then_applies(setup, tmp_path, capsys) -> None:
    """``dpm calibrate`` on a corpus twice the fixture's size (36 utterances), then ``dpm
    eval`` of the new folder: the same labels, the fitted temperature on every probability."""
    table = pq.read_table(setup / "manifest.parquet")
    twice = pa.concat_tables([table, table.set_column(
        0, "conversation_id", pa.array([f"{c}b" for c in table["conversation_id"].to_pylist()])
    )])  # fmt: skip
    pq.write_table(twice, setup / "twice.parquet")
    out, summary = tmp_path / "calibrated", tmp_path / "cal.json"
    args = ["calibrate", "--model", str(setup / "model"), "--corpus", str(setup / "twice.parquet"),
            "--mode", "window", "labeling.window_tokens=32"]  # fmt: skip
    assert cli.main([*args, "--out", str(out), "--json", str(summary)]) == 0
    fit = json.loads(summary.read_text())
    assert fit["n"] == 36 and fit["mode"] == "window" and fit["temperature"] > 0
    assert fit["nll_after"] <= fit["nll_before"] + 1e-9
    model = load_model(str(out))
    assert model.calibration.temperature == pytest.approx(fit["temperature"])
    assert model.model_id == "dpm-random-0+cal" and model.calibration.mode == "window"
    assert json.loads(capsys.readouterr().out)["ece_after"] == pytest.approx(fit["ece_after"])
    base = run_eval(setup, "--mode", "window", "--predictions", str(tmp_path / "a.parquet"))
    evaluated = run_eval(setup, "--mode", "window", "--model", str(out), "--predictions",
                         str(tmp_path / "b.parquet"))  # fmt: skip
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    columns = [f"p_{x}" for x in DEFAULT_LABELS]
    pa_, pb = (np.stack([t[c].to_numpy() for c in columns], axis=1) for t in (a, b))
    np.testing.assert_allclose(pb, apply_temperature(pa_, fit["temperature"]), atol=1e-6)
    assert a["pred"].to_pylist() == b["pred"].to_pylist()
    assert evaluated["modes"]["window"]["ua"] == base["modes"]["window"]["ua"]
    # bad arguments are usage errors (exit 2): an existing --out, a mode, too few labels
    assert cli.main([*args, "--out", str(out)]) == 2
    assert cli.main([*args[:-3], "--mode", "dpmx", "--out", str(tmp_path / "x")]) == 2
    few = [*args[:3], "--corpus", str(setup / "manifest.parquet"), *args[5:]]
    assert cli.main([*few, "--out", str(tmp_path / "y")]) == 2
    assert "at least 20" in capsys.readouterr().err and not (tmp_path / "y").exists()
