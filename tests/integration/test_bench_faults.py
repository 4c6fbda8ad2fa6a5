"""``dpm bench faults`` end to end, small: 2 conversations of ~40 utterances, one actor kill,
one driver kill and restart, checkpoints every 10. The bench starts its own local Ray cluster
(and stops exactly that one); the JSON it prints is checked field by field."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.conftest import CLUSTER_ENV, REPO

pytestmark = pytest.mark.integration
EVERY = 10


def test_bench_faults_loses_and_duplicates_nothing(tmp_path, tiny_model) -> None:
    import os

    from dpm_worker.corpus import SynthConfig, generate_corpus

    corpus = tmp_path / "corpus"
    manifest = generate_corpus(
        str(corpus), SynthConfig(conversations=2, seed=3, min_utterances=40, max_utterances=44)
    )
    done = subprocess.run(
        [
            sys.executable, "-m", "pipelines.cli", "bench", "faults",
            "--corpus", str(corpus), "--model", tiny_model, "--kills", "1",
            "--checkpoint-every", str(EVERY), "--seed", "1", "--workdir", str(tmp_path / "w"),
        ],
        cwd=REPO,
        env={**os.environ, **CLUSTER_ENV},
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["kills"] == 1 and report["driver_restarts"] == 1
    assert report["utterances_total"] == manifest.num_rows
    # The counter the bench measures with sees every utterance of the clean run once.
    assert report["utterances_computed_clean"] == manifest.num_rows
    assert report["rows_duplicated"] == 0
    assert report["rows_lost"] == 0
    assert report["rows_extra"] == 0
    assert report["tables_equal_clean"] is True
    assert report["max_abs_prob_diff"] <= 1e-6
    assert report["run_state_faults"] == {"committed": True, "checkpoint_folders_left": 0}
    # Every kill landed mid-conversation, after its first checkpoint and past the last one.
    kinds = sorted(e["kind"] for e in report["events"])
    assert kinds == ["actor", "driver"]
    for event in report["events"]:
        assert event["position"] > EVERY, report["events"]
    (kill,) = [e for e in report["events"] if e["kind"] == "actor"]
    # An actor kill loses at most the utterances since the last checkpoint (< EVERY); the
    # driver kill at most that per actor (2 actors).
    recomputed = report["utterances_recomputed"]
    assert (
        recomputed
        == report["recomputed_after_actor_kills"] + report["recomputed_after_driver_kill"]
    )
    # ... and its retry resumed from a checkpoint: what it recomputed is what the killed actor
    # labeled after a checkpoint position (the newest, or the one before when the kill cut
    # the newest one's write). Besides the periodic ones, Ray stops a dead driver's actors
    # with SIGTERM, and each writes a checkpoint where it stands, past the position the bench
    # read at the driver kill (seen here: driver kill read at 17, checkpoint at 21; the bench
    # reads the position of one conversation, so another one's may be anywhere).
    lost = report["recomputed_after_actor_kills"]
    resumed_at = kill["position"] - lost
    (driver,) = [e for e in report["events"] if e["kind"] == "driver"]
    at_sigterm = (
        kill["conversation_id"] != driver["conversation_id"] or resumed_at >= driver["position"]
    )
    assert resumed_at > 0 and (resumed_at % EVERY == 0 or at_sigterm), (lost, report["events"])
    assert lost <= EVERY + 1, (lost, report["events"])
    assert recomputed <= report["recomputed_bound_with_driver_kill"] == 3 * EVERY
    assert report["wall_s_clean"] > 0 and report["wall_s_faults"] > 0
