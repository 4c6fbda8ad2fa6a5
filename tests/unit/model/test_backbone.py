import json

import pytest
import torch

from dpm_worker.errors import ConfigError, LabelError, ModelError
from dpm_worker.model import (
    BackboneConfig,
    EmotionModel,
    StreamVocab,
    build_backbone,
    default_model_path,
    load_model,
    save_model,
)


@pytest.fixture(scope="module")
def tiny() -> EmotionModel:
    return EmotionModel.random(seed=0)


def stream(model: EmotionModel) -> torch.Tensor:
    v = model.vocab
    ids = v.utterance_tokens([1, 2, 3, 4, 5], 0) + v.utterance_tokens([6, 7, 8], 1)
    return torch.tensor([ids])


def test_emotion_probs_shape_and_restriction(tiny):
    probs = tiny.emotion_probs(stream(tiny))
    assert probs.shape == (1, 4) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(1))
    logits = torch.randn(2, 3, tiny.vocab.size)
    assert tiny.emotion_logits(logits).shape == (2, 3, 4)
    torch.testing.assert_close(
        tiny.emotion_logits(logits)[..., 2], logits[..., tiny.vocab.emotion_token("sad")]
    )


def test_padding_left_or_right_gives_the_same_probs(tiny):
    ids = stream(tiny)[0]
    n = len(ids)
    batch = torch.zeros(2, n + 3, dtype=torch.long)
    mask = torch.zeros(2, n + 3, dtype=torch.long)
    batch[0, :n], mask[0, :n] = ids, 1  # right padding
    batch[1, 3:], mask[1, 3:] = ids, 1  # left padding
    probs = tiny.emotion_probs(batch, mask)
    torch.testing.assert_close(probs[0], tiny.emotion_probs(stream(tiny))[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(probs[1], probs[0], atol=1e-5, rtol=1e-4)


def test_random_models_are_seeded():
    a, b, c = EmotionModel.random(seed=1), EmotionModel.random(seed=1), EmotionModel.random(seed=2)
    torch.testing.assert_close(a.emotion_probs(stream(a)), b.emotion_probs(stream(b)))
    assert not torch.allclose(a.emotion_probs(stream(a)), c.emotion_probs(stream(c)))
    assert not any(p.requires_grad for p in a.model.parameters())


def test_save_load_roundtrip(tmp_path, tiny):
    save_model(tiny, str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"), device="cpu")
    torch.testing.assert_close(loaded.emotion_probs(stream(tiny)), tiny.emotion_probs(stream(tiny)))
    assert loaded.vocab == tiny.vocab and loaded.max_context == tiny.max_context
    assert len(loaded.fingerprint) == 64
    assert (tmp_path / "m" / "model.safetensors").is_file()
    # saving again over it replaces it atomically and leaves no temporary folders behind
    save_model(tiny, str(tmp_path / "m"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert load_model(str(tmp_path / "m")).fingerprint == loaded.fingerprint


def test_broken_folders_raise_model_error(tmp_path, tiny):
    folder = tmp_path / "m"
    save_model(tiny, str(folder))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="tokenizer.json is missing"):
        load_model(str(folder))
    save_model(tiny, str(folder))
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_model(str(folder))
    save_model(tiny, str(folder))
    (folder / "dpm_manifest.json").unlink()
    with pytest.raises(ModelError, match="dpm_manifest.json") as info:
        load_model(str(folder))
    assert str(folder) in str(info.value)
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))


def test_vocab_mismatch_is_detected(tmp_path, tiny):
    folder = tmp_path / "m"
    save_model(tiny, str(folder))
    meta = json.loads((folder / "dpm_model.json").read_text())
    meta["vocab"]["labels"] = ["neutral", "happy", "sad", "angry", "fear"]
    (folder / "dpm_model.json").write_text(json.dumps(meta))
    from dpm_worker.model import write_file_manifest

    write_file_manifest(folder)
    with pytest.raises(ModelError, match="does not match"):
        load_model(str(folder))


def test_label_and_context_checks(tiny):
    tiny.check_labels(("neutral", "happy", "sad", "angry"))
    with pytest.raises(LabelError, match="joy"):
        tiny.check_labels(("neutral", "joy", "sad", "angry"))
    tiny.check_fits(tiny.max_context)
    with pytest.raises(ModelError, match="exceeds") as info:
        tiny.check_fits(tiny.max_context + 1, "s3://b/rec.wav")
    assert "s3://b/rec.wav" in str(info.value)


def test_build_backbone_and_config_validation():
    vocab = StreamVocab(text_size=3, n_audio=16, labels=("calm", "tense"))
    model = build_backbone(vocab, BackboneConfig(hidden_size=32, num_layers=1, num_heads=2))
    assert model.get_input_embeddings().weight.shape == (vocab.size, 32)
    with pytest.raises(ConfigError, match="history_labels"):
        BackboneConfig(history_labels="true")
    with pytest.raises(ConfigError, match="heads"):
        BackboneConfig(hidden_size=64, num_heads=5)
    rnd = EmotionModel.random(vocab, hidden=32, layers=1, heads=2)
    assert rnd.emotion_probs(torch.tensor([vocab.utterance_tokens([1, 2], 0)])).shape == (1, 2)


def test_default_model_path_is_inside_the_package():
    assert default_model_path().parts[-3:] == ("dpm_worker", "assets", "default_model")
