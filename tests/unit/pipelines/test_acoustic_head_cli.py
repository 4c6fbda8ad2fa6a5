"""``dpm head``: fit a model's acoustic head on training speakers, choose its weight on
validation speakers, write the model with it; ``dpm eval`` then reads it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from dpm_worker.corpus import read_ravdess, write_manifest
from dpm_worker.model import EmotionModel, load_model, save_model
from dpm_worker.speech import BuiltinSpeechTokenizer
from pipelines.cli import main
from pipelines.exit_codes import EXIT_USAGE
from pipelines.train.acoustic_head import parse_weights
from tests.fixtures.corpus_trees import build_ravdess_tree

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """RAVDESS-layout fixture (pitch by emotion, plus the actor's number in Hz): actors 1-4
    to fit, 5 to test (108 training takes are too few for the summary's 90 dimensions to
    learn that spectral detail moves with the voice, so the test voice stays near theirs)."""
    base = tmp_path_factory.mktemp("head")
    root = build_ravdess_tree(base, actors=(1, 2, 3, 4, 5))
    train, _ = read_ravdess(str(root), actors=[1, 2, 3, 4])
    test, _ = read_ravdess(str(root), actors=[5])
    write_manifest(train, str(base / "train.parquet"))
    write_manifest(test, str(base / "test.parquet"))
    # levels relative to each actor's own (the shipped codebook's references)
    model = EmotionModel.random(seed=0)
    config = dataclasses.replace(
        model.speech_tokenizer.config,
        speaker_relative=True,
        speaker_reference="conversation",
        spectral_relative=True,
    )
    tokenizer = BuiltinSpeechTokenizer.random(config, seed=0)
    save_model(dataclasses.replace(model, speech_tokenizer=tokenizer), str(base / "model"))
    return base


def test_head_is_fitted_chosen_on_unseen_speakers_and_read_by_eval(corpus, capsys):
    out = corpus / "with_head"
    args = ["head", "--corpus", str(corpus / "train.parquet"), "--model", str(corpus / "model")]
    args += ["--out", str(out), "--val-group", "actor_(\\d+)", "--val-fraction", "0.25"]
    assert main([*args, "--mode", "utterance", "--model-id", "tiny+head"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train_conversations"] == 3 and len(report["val_conversations"]) == 1
    assert report["train_utterances"] == 3 * 36 and report["val_utterances"] == 36
    assert report["val_ua_head_alone"] > 0.9  # pitch says the emotion in the fixture
    by_weight = {float(w): ua for w, ua in report["val_ua_by_weight"].items()}
    assert report["weight"] > 0 and by_weight[report["weight"]] == max(by_weight.values())
    model = load_model(str(out))
    assert model.model_id == "tiny+head" and model.acoustic_head is not None
    assert model.acoustic_head.weight == report["weight"]

    scores = {}
    for name, folder in (("bare", corpus / "model"), ("head", out)):
        target = corpus / f"eval_{name}.json"
        argv = ["eval", "--corpus", str(corpus / "test.parquet"), "--model", str(folder)]
        assert main([*argv, "--mode", "utterance", "--json", str(target)]) == 0
        scores[name] = json.loads(target.read_text())["modes"]["utterance"]["ua"]
    assert scores["head"] > 0.9 and scores["head"] - scores["bare"] > 0.3


def test_bad_arguments_exit_2(corpus, tmp_path):
    base = ["head", "--corpus", str(corpus / "train.parquet"), "--out", str(tmp_path / "o")]
    base += ["--model", str(corpus / "model")]
    assert main([*base, "--weights", "1,x"]) == EXIT_USAGE
    assert main([*base, "--conversations", "no_such_conversation"]) == EXIT_USAGE
    assert main([*base, "--select", "no_such_conversation"]) == EXIT_USAGE
    assert main([*base, "--share", "actor=1.5"]) == EXIT_USAGE
    assert main([*base, "--share", "no_such_conversation=0.1"]) == EXIT_USAGE
    assert not (tmp_path / "o").exists()


def test_weights_parse():
    assert parse_weights("0, 0.5,2") == [0.0, 0.5, 2.0]
    with pytest.raises(Exception, match="numbers >= 0"):
        parse_weights("-1")


def test_a_share_weighs_a_domain_and_is_chosen_with_the_weight(corpus, tmp_path, capsys):
    from dpm_worker.corpus import read_manifest
    from dpm_worker.training.token_cache import split_conversations

    table = read_manifest(str(corpus / "train.parquet"))
    ids = sorted(set(table.column("conversation_id").to_pylist()))
    train_ids, _ = split_conversations(ids, 0.25, 0, "actor_(\\d+)")
    minor = sorted(train_ids)[0]  # one training conversation as the "other domain"
    args = ["head", "--corpus", str(corpus / "train.parquet"), "--model", str(corpus / "model")]
    args += ["--out", str(tmp_path / "m"), "--val-group", "actor_(\\d+)", "--val-fraction", "0.25"]
    args += ["--share", f"^{minor}$=0,0.3", "--weights", "0,1", "--mode", "utterance"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    got = {(c["share"], c["weight"]) for c in report["candidates"]}
    assert got == {(0.0, 0.0), (0.0, 1.0), (0.3, 0.0), (0.3, 1.0)}
    best = max(c["select"] for c in report["candidates"])
    chosen = [
        c
        for c in report["candidates"]
        if (c["share"], c["weight"]) == (report["chosen_share"], report["weight"])
    ]
    assert chosen[0]["select"] == best and all(c["rest"] is None for c in report["candidates"])
    assert load_model(str(tmp_path / "m")).acoustic_head.info["chosen_share"] in (0.0, 0.3)


def test_choose_lets_the_other_domain_break_near_ties():
    from pipelines.train.acoustic_head import choose

    a = {"select": 0.73, "rest": 0.38, "weight": 4.0}
    b = {"select": 0.725, "rest": 0.60, "weight": 4.0}
    c = {"select": 0.70, "rest": 0.90, "weight": 1.0}
    assert choose([a, b, c], 0.01) is b  # c is too far below on the selecting side
    assert choose([a, b, c], 0.0) is a
    d = {"select": 0.73, "rest": None, "weight": 2.0}
    e = {"select": 0.73, "rest": None, "weight": 1.0}
    assert choose([d, e], 0.01) is e  # no other side: best select UA, then the smaller weight


def test_share_parses_and_weighs():
    import numpy as np

    from pipelines.train.acoustic_head import parse_share, share_weights

    pattern, shares = parse_share("^s[er]_=0, 0.05")
    assert pattern.search("se_conv_1") and not pattern.search("rs_ravdess_actor_01")
    assert shares == [0.0, 0.05]
    assert parse_share(None) == (None, [None])
    for bad in ("0.1", "x=1", "x=-0.1", "x=a", "(=0.1"):
        with pytest.raises(Exception, match="--share"):
            parse_share(bad)
    w = share_weights(np.array([True, False, False, False]), 0.2)
    assert w.tolist() == pytest.approx([0.2, 0.8 / 3, 0.8 / 3, 0.8 / 3])
    assert share_weights(np.array([True, False]), None) is None
    with pytest.raises(Exception, match="no training utterance"):
        share_weights(np.array([False, False]), 0.1)


def test_summary_layers_refit_the_shipped_models_summary_and_keep_its_units(corpus, capsys):
    """``--summary-layers 2`` on the shipped (whisper-units) model: the new folder's tokenizer
    reads block 2, its units and backbone are the shipped ones, and the head reads the new
    summary's width."""
    out = corpus / "block2"
    args = ["head", "--corpus", str(corpus / "train.parquet"), "--out", str(out)]
    args += ["--val-group", "actor_(\\d+)", "--val-fraction", "0.25", "--weights", "1"]
    args += ["--summary-layers", "2", "--summary-utterances", "24", "--mode", "utterance"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train_utterances"] == 3 * 36
    shipped, refitted = load_model(None), load_model(str(out))
    assert refitted.speech_tokenizer.config.summary_layers == (2,)
    assert shipped.speech_tokenizer.config.summary_layers == (2,)  # v11: block 2 already
    assert torch.equal(refitted.speech_tokenizer.centroids, shipped.speech_tokenizer.centroids)
    assert refitted.acoustic_head.dim == shipped.acoustic_head.dim
    assert not torch.equal(
        refitted.speech_tokenizer.summary_norm, shipped.speech_tokenizer.summary_norm
    )  # the shrinkage target was refitted on this corpus


def test_summary_layers_need_an_encoder_tokenizer(corpus, tmp_path, capsys):
    args = ["head", "--corpus", str(corpus / "train.parquet"), "--model", str(corpus / "model")]
    args += ["--out", str(tmp_path / "m"), "--val-group", "actor_(\\d+)", "--val-fraction", "0.25"]
    assert main([*args, "--summary-layers", "2"]) == EXIT_USAGE
    assert "needs a whisper-units speech tokenizer" in capsys.readouterr().err
