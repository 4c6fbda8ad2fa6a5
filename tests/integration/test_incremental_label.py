"""`dpm label --incremental` over a growing S3 bucket: only new or changed conversations run."""

from __future__ import annotations

import io
import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from dpm_worker.storage import get_filesystem
from tests.integration.conftest import run_label, upload

pytestmark = pytest.mark.integration

JOB = ["--actors", "1", "--cpus-per-actor", "1", "progress_interval_s=5"]


def success(out: str, run_id: str) -> dict:
    fs, path = get_filesystem(f"{out}/_runs/{run_id}/_SUCCESS")
    fs.invalidate_cache()
    return json.loads(fs.cat_file(path))


def last_line(result) -> str:
    assert result.stdout.strip(), result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_nightly_labels_only_new_and_changed_conversations(
    local_s3, ray_address, tiny_model, tiny_corpus, s3_bucket, tmp_path
):
    upload(tiny_corpus / "audio", f"s3://{s3_bucket}/corpus/audio")
    manifest = pq.read_table(tiny_corpus / "manifest.parquet")
    ids = sorted(set(manifest.column("conversation_id").to_pylist()))
    assert len(ids) == 5
    fs, root = get_filesystem(f"s3://{s3_bucket}")
    manifest_uri = f"s3://{s3_bucket}/corpus/manifest.parquet"
    out = f"s3://{s3_bucket}/tables"

    def publish(conversations: list[str]) -> None:
        keep = [r for r in manifest.to_pylist() if r["conversation_id"] in conversations]
        with fs.open(f"{root}/corpus/manifest.parquet", "wb") as fh:
            pq.write_table(pa.Table.from_pylist(keep, schema=manifest.schema), fh)
        fs.invalidate_cache()

    def label(*extra: str):
        args = ["--input", manifest_uri, "--output", out, "--model", tiny_model]
        return run_label(*args, "--address", ray_address, *JOB, *extra)

    # Night 0: a plain full run over the first 3 conversations also records fingerprints.
    publish(ids[:3])
    # thresholds any run crosses (the top label has >= 1/4 of 4 labels; a mean confidence is
    # below 1): the run checks warn in the final line and in _SUCCESS, and the run commits
    checks = ["checks.label_share=0.2", "checks.mean_confidence=1.0", "checks.min_utterances=1"]
    base = label(*checks, "--run-id", "base")  # (right after JOB's own KEY=VALUE)
    assert base.returncode == 0, base.stdout + base.stderr[-3000:]
    record = success(out, "base")
    assert record["this_session"]["labeled"] == 3
    assert [w["kind"] for w in record["warnings"]] == ["label_collapse", "low_confidence"]
    assert record["warnings"][0]["threshold"] == 0.2
    assert sum(record["this_session"]["label_counts"].values()) == record["emotions"]["rows"]
    assert "; WARNING label collapse: " in last_line(base)
    assert "; WARNING low confidence: " in last_line(base)

    # Night 1: 2 new conversations in the bucket -> exactly those 2 are labeled.
    publish(ids)
    night1 = label("--incremental", "--run-id", "night1")
    assert night1.returncode == 0, night1.stdout + night1.stderr[-3000:]
    line = last_line(night1)
    assert "2 conversations labeled" in line and "3 unchanged since the last committed" in line
    record = success(out, "night1")
    assert record["this_session"]["labeled"] == 2 and record["incremental"]["unchanged"] == 3
    assert isinstance(record["warnings"], list)
    assert record["incremental"]["previous_runs"] == ["base"]

    # Night 2, unchanged input, default run id: nothing to do, no actor started, and it says so.
    night2 = label("--incremental")
    assert night2.returncode == 0, night2.stdout + night2.stderr[-3000:]
    line = last_line(night2)
    assert line.startswith("dpm label: exit 0 (ok): nothing to do: run nightly-"), line
    assert "0 conversations labeled" in line and "5 unchanged" in line
    assert "starting 1 actor" not in night2.stderr

    # Night 3: one recording re-uploaded with different bytes -> exactly that one relabeled.
    changed = ids[1]
    audio_path = f"{root}/corpus/audio/{changed}.flac"
    samples, rate = sf.read(io.BytesIO(fs.cat_file(audio_path)), dtype="float32")
    buffer = io.BytesIO()
    sf.write(buffer, samples * 0.5, rate, format="FLAC")
    fs.pipe_file(audio_path, buffer.getvalue())
    night3 = label("--incremental", "--run-id", "night3")
    assert night3.returncode == 0, night3.stdout + night3.stderr[-3000:]
    assert "1 conversations labeled" in last_line(night3) and "4 unchanged" in last_line(night3)

    # The warehouse view: the latest labeling of every conversation (docs/operations.md).
    local = tmp_path / "tables"
    fs.get(f"{root}/tables/emotions", str(local / "emotions"), recursive=True)
    latest = duckdb.sql(
        f"""
        WITH latest AS (
            SELECT * FROM read_parquet('{local}/emotions/**/*.parquet', hive_partitioning = true)
            QUALIFY labeled_at = max(labeled_at) OVER (PARTITION BY conversation_id)
        )
        SELECT conversation_id, any_value(run_id), count(*) FROM latest GROUP BY ALL ORDER BY 1
        """
    ).fetchall()
    runs = {c: r for c, r, _ in latest}
    assert runs == {
        ids[0]: "base",
        ids[1]: "night3",
        ids[2]: "base",
        ids[3]: "night1",
        ids[4]: "night1",
    }
    assert sum(n for _, _, n in latest) == manifest.num_rows
