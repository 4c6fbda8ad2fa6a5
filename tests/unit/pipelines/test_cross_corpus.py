"""``dpm bench cross_corpus``: leave-one-corpus-out references beside the models, with CIs."""

from __future__ import annotations

import json

import pytest

from dpm_worker.corpus import read_ravdess, write_manifest
from pipelines.cli import main
from tests.fixtures.corpus_trees import build_ravdess_tree


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    base = tmp_path_factory.mktemp("cc")
    root = build_ravdess_tree(base, actors=(1, 2, 19))
    for name, actors, order in (("train", [1, 2], "shuffled"), ("test", [19], "inertia")):
        table, _ = read_ravdess(str(root), actors=actors, order=order)
        write_manifest(table, str(base / f"{name}.parquet"))
    return base


def test_references_leave_the_test_corpus_out_and_models_are_compared(corpora, tmp_path):
    out = tmp_path / "cc.json"
    train, test = corpora / "train.parquet", corpora / "test.parquet"
    args = [
        "bench", "cross_corpus", "--features", "functionals",
        "--train", f"ravdess={train}", "--train", f"other={train}",
        "--test", f"ravdess:inertia={test}", "--test", f"third={test}",
        "--model", "a=default", "--model", "b=default", "--mode", "utterance,dpm",
        "--slots", "2", "--bootstrap", "30", "--json", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    report = json.loads(out.read_text())
    ravdess, third = report["tests"]["ravdess:inertia"], report["tests"]["third"]
    # ravdess: left out (fit on 'other' only) and in-corpus (both); 'third' has no training
    # side; and when a corpus's training side holds only the test's own voices, no in-corpus
    assert {"ref_functionals_leave_out", "ref_functionals_in_corpus"} <= set(ravdess["scores"])
    assert "ref_functionals_in_corpus" not in third["scores"]
    for block in (ravdess, third):
        for row in ("a utterance", "a dpm", "b utterance", "b dpm"):
            entry = block["scores"][row]
            assert entry["n"] == 36 and 0.0 <= entry["ece"] <= 1.0
            assert entry["ua_ci"][0] <= entry["ua"] <= entry["ua_ci"][1]
        same = block["differences"]["b dpm - a dpm"]
        assert same["ua_diff"] == 0.0  # the same model twice
        assert "a dpm - a utterance" in block["differences"]
        assert "a dpm - ref_functionals_leave_out" in block["differences"]


def test_in_corpus_references_never_read_the_test_voices(corpora, tmp_path):
    out = tmp_path / "same.json"
    test = corpora / "test.parquet"
    args = [
        "bench", "cross_corpus", "--features", "functionals", "--mode", "utterance",
        "--train", f"ravdess={test}", "--train", f"other={corpora / 'train.parquet'}",
        "--test", f"ravdess={test}", "--bootstrap", "20", "--json", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    scores = json.loads(out.read_text())["tests"]["ravdess"]["scores"]
    assert set(scores) == {"ref_functionals_leave_out"}  # its own voices: no in-corpus fit


def test_bad_pairs_are_refused(corpora, capsys):
    assert main(["bench", "cross_corpus", "--test", "nameonly"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
