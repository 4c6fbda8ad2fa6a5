"""Every ``dpm bench`` subcommand runs through the CLI in some test, on a tiny corpus.

A bench is a product command: these smoke tests run the ones no other test runs, with their
cheapest settings, on the shipped model, and where the tokenizer's kind matters on a model of
the v9 kind too (eGeMAPS product codebook + acoustic head,
:func:`tests.fixtures.models.save_v9_kind_model`), so none breaks silently when the model
changes. The registry check below fails when a bench is added to
``BENCHMARKS`` without a test that runs it (``"bench", "NAME"`` in a test's CLI arguments).
``scale`` needs Ray: tests/integration/test_bench_scale.py.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from dpm_worker.corpus import SynthConfig, generate_corpus, read_ravdess, write_manifest
from pipelines.bench.command import BENCHMARKS
from pipelines.cli import main
from pipelines.exit_codes import EXIT_FAILED, EXIT_USAGE
from tests.fixtures.corpus_trees import build_ravdess_tree
from tests.fixtures.models import save_v9_kind_model

TESTS = Path(__file__).resolve().parents[2]
BENCH_RUN = re.compile(r'"bench",\s*"(\w+)"')

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_bench_is_run_by_a_test() -> None:
    run = {
        name for path in TESTS.rglob("test_*.py") for name in BENCH_RUN.findall(path.read_text())
    }
    missing = sorted(set(BENCHMARKS) - run)
    assert not missing, f"no test runs `dpm bench` {missing}: add a smoke test (this module)"


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """2 synthetic conversations of 3-4 utterances (1.5-5 s each)."""
    folder = tmp_path_factory.mktemp("synth") / "corpus"
    config = SynthConfig(conversations=2, seed=11, min_utterances=3, max_utterances=4)
    generate_corpus(str(folder), config)
    return folder


@pytest.fixture(scope="module")
def v9_kind(tmp_path_factory) -> Path:
    return save_v9_kind_model(tmp_path_factory.mktemp("models") / "v9_kind")


def _report(capsys) -> dict:
    """The bench's stdout, parsed as strict JSON (no NaN)."""
    return json.loads(
        capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in the JSON")
    )


def test_synth_compares_worker_counts_on_identical_bytes(capsys) -> None:
    args = ["bench", "synth", "--conversations", "1", "--min-utterances", "2",
            "--max-utterances", "2", "--workers", "1,2"]  # fmt: skip
    assert main(args) == 0
    report = _report(capsys)
    assert [r["workers"] for r in report["runs"]] == [1, 2]
    assert all(r["utterances"] == 2 and r["utterances_per_second"] > 0 for r in report["runs"])
    assert report["identical_bytes_across_runs"] is True
    assert report["best_workers"] in (1, 2)
    assert main([*args[:-1], ""]) == EXIT_USAGE


@pytest.mark.parametrize("kind", ["shipped", "v9_kind"])
def test_memory_on_random_tokens_feeds_the_acoustic_head(kind, v9_kind, capsys) -> None:
    """Both kinds read an acoustic summary beside the codes (random tokens had none: the
    bench failed on any model with an acoustic head)."""
    model = [] if kind == "shipped" else ["--model", str(v9_kind)]
    args = ["bench", "memory", "--tokens", "random", "--utterances", "40",
            "--modes", "utterance,dpm", "--window-tokens", "64", *model]  # fmt: skip
    assert main(args) == 0
    report = _report(capsys)
    assert report["utterances"] == 40 and set(report["modes"]) == {"utterance", "dpm"}
    for block in report["modes"].values():
        assert block["ms_first20"] > 0 and block["rss_mb_last20"] > 0
    # random utterances are 38-124 codes; dpm's history is capped at n_r = 64 tokens
    assert report["modes"]["utterance"]["context_last20"] <= 124 + 2
    assert report["modes"]["dpm"]["context_last20"] <= 64 + 124 + 2


def test_long_turns_reports_null_where_a_corpus_has_no_long_turn(synth, capsys) -> None:
    """The shipped model holds 15 s; the synthetic turns are at most 5 s: no long utterance,
    so the long subsets are null (they were NaN, which is not JSON)."""
    args = ["bench", "long_turns", "--corpus", str(synth), "--mode", "utterance",
            "--bootstrap", "20"]  # fmt: skip
    assert main(args) == 0
    report = _report(capsys)
    assert report["long_utterances"] == 0 and report["utterances"] >= 6
    for rule in ("chunks", "truncate"):
        block = report["rules"][rule]["utterance"]
        assert block["long"] == {"n": 0, "ua": None, "ci": None}
        assert block["rest"]["n"] == report["utterances"] and 0 <= block["rest"]["ua"] <= 1
    assert report["chunks_minus_truncate"]["utterance"]["ua_diff"] is None


def test_long_turns_compares_the_rules_on_long_utterances(synth, tmp_path, capsys) -> None:
    """A v9-kind model of 64 tokens (2.6 s): some 1.5-5 s turns are long."""
    model = save_v9_kind_model(tmp_path / "short", max_context=64)
    args = ["bench", "long_turns", "--corpus", str(synth), "--model", str(model),
            "--mode", "utterance,dpm", "--window-tokens", "32", "--bootstrap", "20"]  # fmt: skip
    assert main(args) == 0
    report = _report(capsys)
    assert report["max_context"] == 64 and 0 < report["long_utterances"] < report["utterances"]
    for rule in ("chunks", "truncate"):
        for mode in ("utterance", "dpm"):
            block = report["rules"][rule][mode]
            assert block["long"]["n"] + block["rest"]["n"] == report["utterances"]
            lo, hi = block["long"]["ci"]
            assert 0 <= lo <= block["long"]["ua"] <= hi <= 1
    diff = report["chunks_minus_truncate"]["dpm"]
    assert -1 <= diff["ci"][0] <= diff["ua_diff"] <= diff["ci"][1] <= 1


def test_memory_loop_cost_on_the_shipped_model(capsys) -> None:
    args = ["bench", "memory_loop_cost", "--writes", "1", "--steps", "1", "--targets", "prior",
            "--utterances", "2", "--utterance-tokens", "8"]  # fmt: skip
    assert main(args) == 0
    rows = _report(capsys)["prior"]
    assert set(rows) == {"order1_k1", "M1_k1"}
    # a difference of CPU times over 2 steps: a number, not a stable one at this size
    assert all(math.isfinite(r["ms_per_step"]) and r["peak_rss_mb"] > 0 for r in rows.values())
    extra = rows["M1_k1"]["peak_rss_mb"] - rows["order1_k1"]["peak_rss_mb"]
    assert rows["M1_k1"]["extra_rss_mb_vs_order1"] == pytest.approx(extra, abs=0.11)
    assert main([*args[:2], "--writes", "0"]) == EXIT_USAGE
    assert main([*args[:2], "--targets", "nowhere"]) == EXIT_USAGE


def test_memory_loop_cost_stops_when_a_configuration_fails(tmp_path, capsys) -> None:
    """The child process fails (no model there): the bench says so (it waited forever)."""
    args = ["bench", "memory_loop_cost", "--writes", "1", "--steps", "1", "--targets", "prior",
            "--model", str(tmp_path / "missing")]  # fmt: skip
    assert main(args) == EXIT_FAILED
    assert "order1_k1" in capsys.readouterr().err


def test_token_memory_builds_a_manifest_in_its_own_process(tmp_path, capsys) -> None:
    """RAVDESS takes are whole files: their manifest has no times (the bench crashed on
    them); the shipped model's tokenizer. One manifest: each costs a fresh process."""
    root = build_ravdess_tree(tmp_path, actors=(3,))
    table, _ = read_ravdess(str(root))
    write_manifest(table.slice(0, 4), str(tmp_path / "ravdess.parquet"))
    args = ["bench", "token_memory", str(tmp_path / "ravdess.parquet"),
            "--workdir", str(tmp_path / "caches")]  # fmt: skip
    assert main(args) == 0
    report = _report(capsys)
    (build,) = report["builds"]
    assert build["utterances"] == 4
    # 4 takes of 0.3 s, each padded to whole 40 ms blocks
    assert 0 < build["audio_hours"] * 3600 <= 4 * 0.32 + 0.05
    assert build["peak_rss_mb"] >= max(build["max_rss_by_quarter_mb"]) > 0
    assert report["peak_ratio_largest_over_smallest"] == 1.0
    assert (tmp_path / "caches" / "cache0").is_dir()


def test_startup_times_both_checks_of_one_folder(tmp_path, capsys) -> None:
    args = ["bench", "startup", "--weights-mb", "1", "--hidden", "64",
            "--workdir", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    report = _report(capsys)
    assert report["hidden"] == 64 and report["layers"] >= 1
    assert math.isclose(report["weights_mb"], 1.0, rel_tol=0.5)
    assert report["full_hash_s"] > 0 and report["start_s"] > 0
    # the checks alone take milliseconds and are rounded: present, not necessarily above 0
    assert report["verify_full_s"] >= 0 and report["verify_cheap_s"] >= 0
    assert main([*args[:2], "--hidden", "258"]) == EXIT_USAGE  # 2 heads of odd width
