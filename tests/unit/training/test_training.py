import argparse
import json

import numpy as np
import pytest
import torch
import yaml

from dpm_worker.errors import ConfigError, LabelError
from dpm_worker.model import IGNORE, EmotionModel, StreamVocab, load_model
from dpm_worker.training import (
    TrainConfig,
    build_stream,
    compute_loss,
    lr_at,
    make_batch,
    sample_starts,
    score_stream,
    score_stream_windows,
    train,
)

VOCAB = StreamVocab(text_size=3, n_audio=32)


def utterances(n: int, seed: int = 0) -> list[dict]:
    """Speaker A/B alternate; the emotion is written in the codes (code = 4 * label + noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = int(rng.integers(4))
        codes = (4 * label + rng.integers(0, 4, size=int(rng.integers(3, 7)))).tolist()
        out.append(
            {
                "speaker": "AB"[i % 2],
                "codes": codes,
                "emotion": VOCAB.labels[label],
                "expressive": True,
            }
        )
    return out


def test_build_stream_layout():
    utts = utterances(5)
    utts[2]["speaker"] = "A"  # A, B, A, B, A -> A, B, A, B, A still; make a third speaker:
    utts[3]["speaker"] = "C"
    stream = build_stream(VOCAB, "c", utts, aux_previous=2)
    assert stream.tokens[0] == VOCAB.speaker_token(0)
    assert (stream.tokens[stream.ends] == VOCAB.audio_end).all()
    assert stream.speakers.tolist() == [0, 1, 0, 2, 0]
    assert stream.previous[4].tolist() == [2, 0] and stream.previous[1].tolist() == [-1, -1]
    assert stream.labels.tolist() == [VOCAB.label_index(u["emotion"]) for u in utts]
    with_labels = build_stream(VOCAB, "c", utts, history_labels="predicted")
    assert len(with_labels.tokens) == len(stream.tokens) + 5
    assert (with_labels.tokens[with_labels.ends + 1] >= VOCAB.emotion_offset).all()


def test_make_batch_targets():
    stream = build_stream(VOCAB, "c", utterances(6), aux_previous=1)
    start, window = int(stream.ends[1]) + 1, 40
    batch = make_batch(VOCAB, [stream], [start], window)
    ids = batch.input_ids[0]
    n = int(batch.attention_mask.sum())
    assert n == min(window, len(stream.tokens) - start)
    audio = batch.audio_targets[0]
    nxt = ids[1:n]
    is_audio = (nxt >= VOCAB.audio_offset) & (nxt < VOCAB.speaker_offset)
    assert torch.equal(audio[: n - 1][is_audio], nxt[is_audio])
    assert (audio[: n - 1][~is_audio] == IGNORE).all() and (audio[n - 1 :] == IGNORE).all()
    emo_pos = (batch.emotion_targets[0] != IGNORE).nonzero().flatten()
    assert (ids[emo_pos] == VOCAB.audio_end).all()
    # utterance 2 (speaker A) cannot see utterance 0 (cut off); utterance 4 sees utterance 2
    aux = batch.aux_targets[0, 0]
    first, later = emo_pos[0], emo_pos[2]
    assert aux[first] == IGNORE and aux[later] == stream.labels[2]


def test_training_learns_and_scores(tmp_path):
    torch.manual_seed(0)
    model = EmotionModel.random(VOCAB, hidden=32, layers=1, heads=2, max_context=64)
    model.model.requires_grad_(True)
    streams = [build_stream(VOCAB, f"c{i}", utterances(30, seed=i)) for i in range(6)]
    cfg = TrainConfig(window_tokens=64, batch_size=8, epochs=12, lr=3e-3, warmup_steps=5, threads=1)
    val = build_stream(VOCAB, "v", utterances(30, seed=99))

    def accuracy() -> float:
        probs = score_stream(model, val, "utterance", 0)
        return float((probs.argmax(1) == val.labels).mean())

    before = accuracy()
    calls = []
    history = train(
        model, streams, cfg, on_eval=lambda step, epoch: calls.append(step), progress=False
    )
    after = accuracy()
    assert after > 0.9 > before
    assert calls and calls[-1] == history[-1]["step"]
    assert history[-1]["L_e"] < history[0]["L_e"]
    window = score_stream_windows(model, val, 64)
    assert window.shape == (30, 4) and np.allclose(window.sum(1), 1, atol=1e-5)
    full = score_stream(model, val, "full", 0)
    assert full.shape == (30, 4)


def test_loss_parts_and_config_validation():
    model = EmotionModel.random(VOCAB, hidden=32, layers=1, heads=2)
    stream = build_stream(VOCAB, "c", utterances(8))
    batch = make_batch(VOCAB, [stream], [0], 64)
    loss, parts = compute_loss(model, batch, TrainConfig(aux_previous=0), None)
    assert torch.isclose(loss, torch.tensor(0.5 * parts["L_a"] + 0.5 * parts["L_e"]), atol=1e-4)
    cfg = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, max_minutes=30)
    assert lr_at(0, 1000, cfg) == pytest.approx(0.1) and lr_at(10, 1000, cfg) == pytest.approx(1.0)
    assert lr_at(500, 1000, cfg, minutes=30) == pytest.approx(0.1)  # the budget ran out: decayed
    assert lr_at(999, 1000, cfg, minutes=1) < 0.11
    with pytest.raises(ConfigError, match="history_labels"):
        TrainConfig(history_labels="gold")
    with pytest.raises(ConfigError, match="val_fraction"):
        TrainConfig(val_fraction=1.0)


# --- the pipeline, end to end on a tiny synthetic corpus -------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from dpm_worker.corpus import SynthConfig, generate_corpus

    out = tmp_path_factory.mktemp("corpus")
    generate_corpus(
        str(out), SynthConfig(conversations=3, seed=5, min_utterances=8, max_utterances=8)
    )
    return out


def tiny_config(tmp_path, **extra) -> str:
    data = {
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "model_id": "tiny"},
        "tokenizer": {"n_spectral": 2, "n_energy": 4, "n_pitch": 4},
        "train": {
            "window_tokens": 256,
            "batch_size": 2,
            "warmup_steps": 2,
            "val_fraction": 0.34,
            "threads": 1,
        },
        **extra,
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def run_train(corpus, out, config, **flags) -> int:
    from pipelines.train import backbone as train_backbone

    parser = argparse.ArgumentParser()
    train_backbone.add_arguments(parser)
    argv = [
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--config",
        config,
        "--epochs",
        "1",
        "--no-progress",
    ]
    for key, value in flags.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return train_backbone.run(parser.parse_args(argv))


def test_dpm_train_from_scratch(tmp_path, corpus):
    out = tmp_path / "model"
    assert run_train(corpus, out, tiny_config(tmp_path), cache_dir=tmp_path / "cache", seed=3) == 0
    model = load_model(str(out))
    assert model.model_id == "tiny" and model.max_context == 256 and model.vocab.n_audio == 32
    record = json.loads((out / "training.json").read_text())
    assert record["split"]["validation_conversations"] == 1 and record["evals"]
    assert 0 <= record["best"]["window"]["ua"] <= 1
    assert list((tmp_path / "cache" / "tokens").iterdir())  # codes cached for the next run
    # continue training the saved model: same tokenizer and vocabulary, new weights
    more = tmp_path / "more"
    assert (
        run_train(corpus, more, tiny_config(tmp_path), init_model=out, cache_dir=tmp_path / "cache")
        == 0
    )
    continued = load_model(str(more))
    assert continued.speech_tokenizer.fingerprint == model.speech_tokenizer.fingerprint
    assert continued.fingerprint != model.fingerprint


@pytest.mark.parametrize(
    "order, memory",
    [(1, {"write_target": "audio", "optimizer": "adamw", "lr": 0.001, "steps_per_utterance": 1}),
     (2, {})],  # order 2 with the default (prior, SGD) memory, through the writes
)  # fmt: skip
def test_dpm_train_memory_loop_stage(tmp_path, corpus, order, memory):
    """`dpm train --init-model M` with a memory_loop section: trains through the DPM loop."""
    first = tmp_path / "first"
    assert run_train(corpus, first, tiny_config(tmp_path), cache_dir=tmp_path / "cache") == 0
    loop = tmp_path / "loop"
    extra = {
        "memory_loop": {"epochs": 1, "utterances_per_step": 2, "plain_every": 1, "window_tokens": 64,
                        "order": order},
        "memory": memory,
    }  # fmt: skip
    config = tiny_config(tmp_path, **extra)
    assert run_train(corpus, loop, config, init_model=first, cache_dir=tmp_path / "cache") == 0
    record = json.loads((loop / "training.json").read_text())
    evals = record["memory_loop"]["evals"]
    assert [e["epoch"] for e in evals] == [0.0, 1.0]
    assert set(evals[0]) >= {"window", "dpm"}
    assert record["loss_history"][0]["L_plain"] > 0
    # The kept checkpoint is the best dpm read (epoch 0 = the starting weights, for comparison).
    best = max(evals, key=lambda e: e["dpm"]["ua"])
    assert record["best"]["epoch"] == best["epoch"]
    trained = load_model(str(loop))  # saved without the adapters, loads as a plain model
    assert not any("lora_" in k for k in trained.model.state_dict())


def test_dpm_train_extends_a_base_llama_with_lora(tmp_path, corpus):
    import transformers

    from dpm_worker.model import SCRATCH_TEXT_TOKENS

    base = tmp_path / "base"
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    words = ["<unk>", "<s>", "</s>", "hello", "world", "how", "are", "you"]
    text_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")),
        unk_token="<unk>", bos_token="<s>", eos_token="</s>",
    )  # fmt: skip
    config = transformers.LlamaConfig(
        vocab_size=len(text_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(str(base))
    text_tok.save_pretrained(str(base))
    out = tmp_path / "extended"
    cfg = tiny_config(tmp_path, lora={"r": 4, "alpha": 8})
    assert run_train(corpus, out, cfg, base_model=base, cache_dir=tmp_path / "cache") == 0
    model = load_model(str(out))
    assert model.vocab.text_size == len(text_tok) > len(SCRATCH_TEXT_TOKENS)
    assert model.model.get_input_embeddings().weight.shape[0] == model.vocab.size
    assert "lora" not in " ".join(n for n, _ in model.model.named_parameters())  # merged
    ids = torch.tensor([model.vocab.utterance_tokens([1, 2, 3], 0)])
    assert model.emotion_probs(ids).shape == (1, 4)


def test_dpm_train_rejects_bad_labels_and_keys(tmp_path, corpus):
    with pytest.raises(LabelError, match="angry|happy|sad"):
        run_train(corpus, tmp_path / "m", tiny_config(tmp_path, labels=["neutral", "calm"]),
                  cache_dir=tmp_path / "cache")  # fmt: skip
    with pytest.raises(ConfigError, match="unknown config key.*lora.rank"):
        run_train(corpus, tmp_path / "m", tiny_config(tmp_path, lora={"rank": 4}))
    assert not (tmp_path / "m").exists()


def test_aligned_windows_start_on_utterance_boundaries():
    rng = np.random.default_rng(0)
    for history in ("none", "predicted"):
        stream = build_stream(VOCAB, "c", utterances(20), history_labels=history)
        _, starts = sample_starts([stream], 64, 50, rng, aligned_fraction=1.0)
        assert all(
            stream.tokens[s] in [VOCAB.speaker_token(0), VOCAB.speaker_token(1)] for s in starts
        )
        _, starts = sample_starts([stream], 64, 200, rng, aligned_fraction=0.0)
        assert any(stream.tokens[s] >= VOCAB.audio_offset for s in starts)  # anywhere
