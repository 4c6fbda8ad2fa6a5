"""The packed read (dpm_worker.model.packed) computes the padded transformers forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from dpm_worker.memory.step import Padded
from dpm_worker.model import default_model_path, load_model
from dpm_worker.model.packed import as_batch, last_token_logits, packs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_llama(kv_heads: int, layers: int, dtype: torch.dtype) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        attention_bias=True,  # biases come from the model's own modules
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval().to(dtype)


def rows(lengths: list[int], vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, vocab, size=n)] for n in lengths]


def padded(lm, seqs) -> torch.Tensor:
    return Padded.of(seqs, torch.device("cpu")).logits(lm, 1)[:, -1]


@pytest.mark.parametrize(("kv_heads", "layers"), [(4, 3), (2, 2), (1, 1)])
def test_packed_equals_padded_forward_for_rows_of_any_length(kv_heads, layers) -> None:
    lm = tiny_llama(kv_heads, layers, torch.float32)
    assert packs(lm)
    seqs = rows([1, 7, 40, 3, 40, 129], lm.config.vocab_size)
    with torch.no_grad():
        got, want = last_token_logits(lm, seqs), padded(lm, seqs)
        alone = torch.cat([padded(lm, [s]) for s in seqs])
    assert got.shape == (len(seqs), lm.config.vocab_size)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, alone, rtol=0, atol=1e-5)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    # a row does not depend on what shares its batch
    with torch.no_grad():
        again = last_token_logits(lm, [seqs[2], *rows([90, 5], lm.config.vocab_size, 1)])
    torch.testing.assert_close(again[0], got[2], rtol=0, atol=1e-5)


def test_packed_read_of_the_default_model_and_in_bf16() -> None:
    lm = load_model(str(default_model_path())).model
    seqs = rows([331, 290, 12, 300], lm.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(last_token_logits(lm, seqs), padded(lm, seqs), rtol=0, atol=1e-5)
        half = lm.to(torch.bfloat16)
        got, want = last_token_logits(half, seqs).float(), padded(half, seqs).float()
    assert got.dtype == torch.float32
    bound = 0.1  # bf16 rounding (a step is 1/32 at |logit| ~4)
    assert (got - want).abs().max() < bound
    # the top token agrees wherever the reference's top two are further apart than two reads
    # within the bound can move them (near-ties over 2,300 tokens may flip either way)
    top2 = want.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * bound
    assert torch.equal(got.argmax(-1)[clear], want.argmax(-1)[clear])


def test_packed_refuses_empty_rows_and_other_architectures() -> None:
    lm = tiny_llama(4, 1, torch.float32)
    with pytest.raises(ValueError, match="at least one token"):
        last_token_logits(lm, [[1, 2], []])
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2))
    assert not packs(gpt2)


def test_rows_of_one_length_run_as_a_batch_with_the_same_gradients() -> None:
    lm = tiny_llama(2, 2, torch.float32).requires_grad_(True)
    seqs = rows([5, 5, 5], lm.config.vocab_size)
    assert as_batch(seqs) and not as_batch([[1], [1, 2]])
    grads = []
    for forward in (last_token_logits, padded):
        lm.zero_grad()
        logits = forward(lm, seqs)
        (logits.log_softmax(-1)[:, :7] * torch.arange(7.0)).sum().backward()
        grads.append([p.grad.clone() for p in lm.parameters()])
    for got, want in zip(*grads, strict=True):  # float rounding: relative 1e-5
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert any(g.abs().max() > 1e-3 for g in grads[0])  # a real comparison
