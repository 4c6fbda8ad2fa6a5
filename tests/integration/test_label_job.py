"""The labeling job end to end through the CLI, on a real local Ray cluster and local S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from dpm_worker.audio import write_audio
from dpm_worker.storage import get_filesystem
from tests.integration.conftest import (
    ACCESS_KEY,
    CLUSTER_ENV,
    REPO,
    SECRET_KEY,
    run_label,
    upload,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

# Small and single-threaded: the cluster has 2 CPUs shared with the test process.
JOB = [  # the clean run: one conversation at a time per actor, the reference of the slots
    "--actors",
    "2",
    "--cpus-per-actor",
    "0.5",
    "--slots-per-actor",
    "1",
    "progress_interval_s=2",
]


def read_table(uri: str, kind: str) -> pd.DataFrame:
    fs, path = get_filesystem(f"{uri}/{kind}")
    fs.invalidate_cache()
    if not fs.exists(path):
        return pd.DataFrame()
    return (
        ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
        .to_table()
        .to_pandas()
    )


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    keep = frame.drop(columns=["run_id", "labeled_at"]).astype({"emotion": str})
    return keep.sort_values(["conversation_id", "utterance_index"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def s3_corpus(local_s3, tiny_corpus):
    bucket = "label-job-corpus"
    local_s3.create_bucket(bucket)
    upload(tiny_corpus, f"s3://{bucket}/corpus")
    return f"s3://{bucket}/corpus/manifest.parquet"


@pytest.fixture(scope="module")
def clean_run(local_s3, ray_address, tiny_model, s3_corpus):
    bucket = "label-job-clean"
    local_s3.create_bucket(bucket)
    out = f"s3://{bucket}/tables"
    result = run_label(
        "--input",
        s3_corpus,
        "--output",
        out,
        "--model",
        tiny_model,
        "--address",
        ray_address,
        "--run-id",
        "clean",
        *JOB,
        timeout=900,  # a shared machine may take minutes to start the actors
    )
    return out, result


def test_end_to_end_on_s3_and_rerun_adds_nothing(
    clean_run, s3_corpus, ray_address, tiny_model, tmp_path
):
    out, first = clean_run
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    assert first.stdout.strip().splitlines()[-1].startswith("dpm label: exit 0 (ok)")
    manifest = pq.read_table(get_filesystem(s3_corpus)[0].open(get_filesystem(s3_corpus)[1]))
    emotions = read_table(out, "emotions")
    assert len(emotions) == manifest.num_rows and read_table(out, "errors").empty
    assert set(emotions["mode"]) == {"dpm"}
    assert emotions["gold_emotion"].notna().all()
    # DuckDB reads the Hive-partitioned files (copied down: DuckDB's S3 needs an extension).
    fs, path = get_filesystem(out)
    local = str(tmp_path / "tables")
    fs.get(path, local, recursive=True)
    n, parts = duckdb.sql(
        f"select count(*), count(distinct run_date) from read_parquet('{local}/emotions/**/*.parquet',"
        " hive_partitioning=true)"
    ).fetchall()[0]
    assert (n, parts) == (manifest.num_rows, 1)
    success = json.loads(fs.cat_file(f"{path}/_runs/clean/_SUCCESS"))
    assert success["emotions"]["rows"] == manifest.num_rows

    again = run_label(
        "--input",
        s3_corpus,
        "--output",
        out,
        "--model",
        tiny_model,
        "--address",
        ray_address,
        "--run-id",
        "clean",
        *JOB,
        module=True,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 conversations labeled" in again.stdout and "5 already committed" in again.stdout
    assert len(read_table(out, "emotions")) == manifest.num_rows

    # Credentials never appear in logs, tables or metadata.
    for text in (first.stdout, first.stderr, again.stdout, again.stderr):
        assert SECRET_KEY not in text and ACCESS_KEY not in text
    for name in fs.find(path):
        blob = fs.cat_file(name)
        assert SECRET_KEY.encode() not in blob and ACCESS_KEY.encode() not in blob, name


def bad_corpus(folder, tiny_corpus):
    """The synthetic corpus plus every kind of bad recording and bad conversation."""
    import shutil

    shutil.copytree(tiny_corpus / "audio", folder / "audio")
    rng = np.random.default_rng(0)
    (folder / "audio" / "corrupt.flac").write_bytes(b"fLaC" + rng.bytes(3000))
    (folder / "audio" / "empty.wav").write_bytes(b"")
    write_audio(str(folder / "audio" / "silent.wav"), np.zeros((2, 16000 * 4), np.float32), 16000)
    good = pq.read_table(tiny_corpus / "manifest.parquet").to_pylist()
    conv = [r for r in good if r["conversation_id"] == "conv_0000"]
    rows = [r for r in good if r["conversation_id"] in ("conv_0001", "conv_0002")]

    def clone(cid, source=conv, **changes):
        return [{**r, "conversation_id": cid, **changes} for r in source]

    rows += clone("../../escape/evil")  # a good conversation with a hostile id
    for cid, audio in (
        ("bad_corrupt", "corrupt.flac"),
        ("bad_empty", "empty.wav"),
        ("bad_missing", "missing.flac"),
        ("bad_silent", "silent.wav"),
    ):
        rows += [
            {**r, "end_s": min(r["end_s"], 3.9), "start_s": min(r["start_s"], 3.0)}
            for r in clone(cid, audio_uri=f"audio/{audio}")[:2]
        ]
    dup = clone("bad_duplicate")
    dup[1]["utterance_index"] = dup[0]["utterance_index"]
    rev = clone("bad_reversed")
    rev[1]["start_s"], rev[1]["end_s"] = rev[1]["end_s"], rev[1]["start_s"]
    rows += dup + rev
    # An unsegmented stereo recording: one row, no times -> VAD per channel inside the actor.
    rows.append(
        {
            **conv[0],
            "conversation_id": "vad_stereo",
            "utterance_index": 0,
            "speaker": "call",
            "start_s": None,
            "end_s": None,
            "channel": None,
            "emotion": None,
            "audio_uri": "audio/conv_0001.flac",
        }
    )
    pq.write_table(pa.Table.from_pylist(rows), folder / "manifest.parquet")
    return rows


def test_bad_input_lands_in_errors_table(tmp_path, tiny_corpus, s3_bucket, ray_address, tiny_model):
    rows = bad_corpus(tmp_path / "bad", tiny_corpus)
    upload(tmp_path / "bad", f"s3://{s3_bucket}/in")
    out = f"s3://{s3_bucket}/out"
    result = run_label(
        "--input",
        f"s3://{s3_bucket}/in/manifest.parquet",
        "--output",
        out,
        "--model",
        tiny_model,
        "--address",
        ray_address,
        *JOB,
    )
    assert result.returncode == 3, result.stdout + result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith("dpm label: exit 3 (partial)")
    emotions, errors = read_table(out, "emotions"), read_table(out, "errors")
    by_conv = errors.groupby("conversation_id")["error_type"].agg(set).to_dict()
    assert by_conv == {
        "bad_corrupt": {"AudioError"},
        "bad_empty": {"AudioError"},
        "bad_missing": {"AudioError"},
        "bad_silent": {"AudioError"},
        "bad_duplicate": {"ManifestError"},
        "bad_reversed": {"ManifestError"},
    }
    assert errors["message"].str.len().min() > 10
    assert set(emotions["conversation_id"]) == {
        "conv_0001",
        "conv_0002",
        "../../escape/evil",
        "vad_stereo",
        "bad_reversed",  # its reversed row is in the errors table, the others are labeled
    }
    reversed_errors = errors[errors["conversation_id"] == "bad_reversed"]
    bad_rows = [
        r["utterance_index"]
        for r in rows
        if r["conversation_id"] == "bad_reversed" and r["start_s"] > r["end_s"]
    ]
    assert list(reversed_errors["utterance_index"]) == bad_rows
    # Every input utterance lands in exactly one table (the VAD row becomes its turns).
    segmented = [r for r in rows if r["conversation_id"] != "vad_stereo"]
    labeled = emotions[emotions["conversation_id"] != "vad_stereo"]
    assert len(labeled) + len(errors) == len(segmented)
    keys = list(zip(labeled["conversation_id"], labeled["utterance_index"], strict=True))
    assert len(keys) == len(set(keys))
    # VAD found the turns and took speakers from the channels.
    vad = emotions[emotions["conversation_id"] == "vad_stereo"].sort_values("utterance_index")
    assert len(vad) >= 2 and set(vad["speaker"]) == {"ch0", "ch1"}
    assert (vad["end_s"] > vad["start_s"]).all() and vad["start_s"].is_monotonic_increasing
    # The hostile id's file stayed under the output prefix.
    fs, path = get_filesystem(out)
    assert all(name.startswith(path + "/") for name in fs.find(path))
    assert not fs.exists(path.rsplit("/", 1)[0] + "/escape")


def probability_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("p_")]


def assert_tables_equal(got: pd.DataFrame, want: pd.DataFrame, slots: int) -> float:
    """Same rows; with several slots per actor the numbers within 1e-5 (batched vs alone).
    Returns max |delta p|."""
    assert list(got.columns) == list(want.columns)
    delta = float(
        np.abs(
            got[probability_columns(got)].to_numpy() - want[probability_columns(want)].to_numpy()
        ).max(initial=0.0)
    )
    if slots == 1:
        pd.testing.assert_frame_equal(got, want)
    else:
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=0, atol=1e-5)
    return delta


def test_slots_per_actor_writes_the_tables_of_one_slot(
    clean_run, s3_corpus, s3_bucket, ray_address, tiny_model
):
    """One actor labeling 3 conversations at once (lengths 3-5: they join and leave mid-way)
    writes the rows of the 2-actor, 1-slot clean run: same rows and labels, p within 1e-5."""
    out = f"s3://{s3_bucket}/slots"
    result = run_label(
        "--input",
        s3_corpus,
        "--output",
        out,
        "--model",
        tiny_model,
        "--address",
        ray_address,
        "--run-id",
        "slots",
        "--actors",
        "1",
        "--cpus-per-actor",
        "0.5",
        "--slots-per-actor",
        "3",
        "progress_interval_s=2",
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    clean = comparable(read_table(clean_run[0], "emotions"))
    got = comparable(read_table(out, "emotions"))
    assert len(got) == len(clean) and got["conversation_id"].nunique() == 5
    delta = assert_tables_equal(got, clean, slots=3)
    print(json.dumps({"slots_per_actor": 3, "rows": len(got), "max_abs_dp": delta}))


@pytest.mark.parametrize("slots", [1, 3])
def test_driver_then_actor_killed_resume_equals_clean_run(
    clean_run, s3_corpus, s3_bucket, ray_address, tiny_model, tmp_path, slots
):
    """Kill the driver mid-run; resume with the same run id while an actor is killed
    from outside by its id: every utterance lands exactly once and the final table equals a
    clean run's. With 3 slots per actor several conversations are in flight on the killed
    actor, each checkpointed every 2 utterances: all go back to the queue and resume from
    their own checkpoints."""
    out = f"s3://{s3_bucket}/out"
    fs, path = get_filesystem(out)
    args = [
        "--input",
        s3_corpus,
        "--output",
        out,
        "--model",
        tiny_model,
        "--address",
        ray_address,
        "--run-id",
        "resumed",
        "--actors",
        "1",
        "--cpus-per-actor",
        "0.5",
        "--slots-per-actor",
        str(slots),
        "in_flight_per_actor=1",
    ]
    if slots > 1:
        args.append("checkpoint_every_utterances=2")
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "label", *args],
        cwd=REPO,
        env={**os.environ, **CLUSTER_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def first_commit() -> bool:
        fs.invalidate_cache()
        return driver.poll() is not None or bool(fs.glob(f"{path}/emotions/*/*.parquet"))

    wait_until(first_commit, 300, "a committed conversation")  # shared machine: slow actors
    assert driver.poll() is None, "the driver finished before it could be killed"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    fs.invalidate_cache()
    assert 1 <= len(fs.glob(f"{path}/emotions/*/*.parquet")) < 5
    assert not fs.exists(f"{path}/_runs/resumed/_SUCCESS")

    # The resumed run's actor is killed from outside, by its id through Ray's state API,
    # while the run is under way (the library carries no fault hook).
    before = set(fs.glob(f"{path}/emotions/*/*.parquet"))
    resumed_driver = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "label", *args],
        cwd=REPO,
        env={**os.environ, **CLUSTER_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = kill_worker_actor_after_a_commit(fs, path, before, resumed_driver, ray_address)
    stdout, stderr = resumed_driver.communicate(timeout=300)
    assert resumed_driver.returncode == 0, stdout + stderr[-3000:]
    assert killed, "the actor was never killed"
    assert "already committed" in stdout
    success = json.loads(fs.cat_file(f"{path}/_runs/resumed/_SUCCESS"))
    assert success["this_session"]["actor_deaths"] == 1
    clean = comparable(read_table(clean_run[0], "emotions"))
    final = comparable(read_table(out, "emotions"))
    keys = list(zip(final["conversation_id"], final["utterance_index"], strict=True))
    assert len(keys) == len(set(keys))  # every utterance exactly once
    assert_tables_equal(final, clean, slots)
    fs.invalidate_cache()
    assert not fs.exists(f"{path}/_runs/resumed/checkpoints")  # cleared with the run


def kill_worker_actor_after_a_commit(fs, path, before, driver, ray_address) -> bool:
    """Once the resumed run commits a file, SIGKILL its live actor, found by id (state API)."""
    from ray._private.state import actors as gcs_actors  # the GCS table: no dashboard needed

    def kill_after_a_commit() -> str | None:
        if driver.poll() is not None:
            return "driver ended"
        fs.invalidate_cache()
        if not set(fs.glob(f"{path}/emotions/*/*.parquet")) - before:
            return None
        table = gcs_actors(actor_state_name="ALIVE")  # this session's cluster (ray.init)
        alive = [
            info["Pid"]
            for info in table.values()
            if "ConversationWorker" in str(info.get("ActorClassName", ""))
        ]
        for pid in alive:
            os.kill(pid, signal.SIGKILL)  # the process of that actor id, nothing else
        return "killed" if alive else None

    try:
        return wait_until(kill_after_a_commit, 180, "a commit of the resumed run") == "killed"
    except TimeoutError:
        return False  # the caller still waits for the driver, then fails on it


def test_bad_manifest_or_unreachable_output_fail_fast(
    tmp_path, s3_bucket, s3_corpus, tiny_model, capsys
):
    """Exit 2 before any work; run in-process through the CLI's entry point (no Ray needed)."""
    from pipelines.cli import main

    pq.write_table(
        pa.table({"conversation_id": ["a"], "speaker": ["x"]}), tmp_path / "manifest.parquet"
    )
    out = f"s3://{s3_bucket}/out"
    common = ["--model", tiny_model, "--address", "127.0.0.1:1"]
    code = main(["label", "--input", str(tmp_path / "manifest.parquet"), "--output", out, *common])
    missing = capsys.readouterr().out
    assert code == 2 and "exit 2 (usage)" in missing and "utterance_index" in missing
    code = main(["label", "--input", s3_corpus, "--output", "s3://no-such-bucket-dpm/o", *common])
    unreachable = capsys.readouterr().out
    assert code == 2 and "no-such-bucket-dpm" in unreachable
    fs, path = get_filesystem(out)
    fs.invalidate_cache()
    assert not fs.exists(path)  # nothing was written
