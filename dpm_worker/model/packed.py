"""The logits at each sequence's last token, for a batch of sequences of different lengths,
computed without padding and with only what the last token needs.

A read needs one column of logits per row, yet a left-padded batch through the transformers
forward pays for

- the padding: every row is as long as the longest (linear layers and attention alike), and a
  padded batch needs an explicit attention mask, where one row alone attends causally;
- the last layer at every position: only the last position's hidden state reaches the logits,
  so the last layer needs the keys and values of every position but its query, output
  projection and MLP only at the last one (a quarter of a 4-layer model's work);
- the generic forward's own per-call work (mask building, output records), which is most of
  the cost of the memory's writes on one-token rows.

:func:`last_token_logits` runs rows of different lengths packed: concatenated into one
sequence of ``sum(lengths)`` tokens through the linear layers and RMSNorms, attention one row
at a time (causal, positions from 0 on each row, as when the row runs alone); adapters wrapped
around the model's modules apply only if they act per token, so the engine packs reads with the
memory off (``window``/``full``, the default ``prior`` memory's read at ``<audio_end>``). Rows
of one length run as an ordinary batch with causal attention and no mask, row n at batch row n,
so the batched memory's per-row adapters apply (the ``prior`` write on lone speaker tokens).
It calls the model's own modules (projections, norms, MLP, rotary embedding). The arithmetic is
the transformers forward's, in another order of summation at most: tested equal to the padded
forward within 1e-5 (fp32), gradients included.

Llama-architecture models only (:func:`packs`); others take the padded forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import Any

import torch
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half


def packs(lm: nn.Module) -> bool:
    """Whether :func:`last_token_logits` computes ``lm``'s forward (a Llama causal LM)."""
    config = getattr(lm, "config", None)
    return getattr(config, "model_type", None) == "llama" and hasattr(lm, "lm_head")


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x [B, heads, T, head_dim]`` with ``cos``/``sin`` ``[B, T, D]``."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def as_batch(seqs: Sequence[Sequence[int]]) -> bool:
    """Whether :func:`last_token_logits` runs ``seqs`` as a batch, row n at batch row n (all
    of one length: no padding needed), so adapters that act per batch row (the batched memory)
    apply; otherwise the rows are packed into one sequence and only per-token modules may."""
    return len({len(s) for s in seqs}) == 1


def last_token_logits(lm: nn.Module, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[N, vocab]`` logits at the last token of each of ``seqs``, each run as if alone.

    Rows of one length run as a batch ``[N, T]`` (:func:`as_batch`), others packed into
    ``[1, sum(T)]``. Builds a graph unless called under ``torch.no_grad()``.
    """
    core: Any = lm.model  # LlamaModel (packs)
    device = next(lm.parameters()).device
    lengths = [len(s) for s in seqs]
    if min(lengths) < 1:
        raise ValueError("every sequence needs at least one token")
    batch = as_batch(seqs)
    if batch:
        ids = torch.tensor([list(s) for s in seqs], dtype=torch.long, device=device)
        positions = torch.arange(lengths[0], device=device).expand(len(seqs), -1)
    else:
        ids = torch.tensor([[int(t) for s in seqs for t in s]], dtype=torch.long, device=device)
        positions = torch.cat([torch.arange(n, device=device) for n in lengths])[None]
        # where each row starts in the one sequence, and its last token
        starts = list(accumulate(lengths[:-1], initial=0))
        last = torch.tensor([s + n - 1 for s, n in zip(starts, lengths, strict=True)])
        last = last.to(device)

    def at_last(t: torch.Tensor) -> torch.Tensor:  # [B, T, ...] -> each row's last token
        return t[:, -1:] if batch else t[:, last]

    hidden = core.embed_tokens(ids)  # [B, T, hidden]
    cos, sin = core.rotary_emb(hidden, position_ids=positions)
    layers = core.layers[: core.config.num_hidden_layers]
    for index, layer in enumerate(layers):
        final = index == len(layers) - 1  # only the last token's query, output and MLP
        attn = layer.self_attn
        head_dim, gqa = attn.head_dim, attn.num_key_value_groups > 1
        x = layer.input_layernorm(hidden)
        keys = attn.k_proj(x).view(*x.shape[:2], -1, head_dim).transpose(1, 2)
        values = attn.v_proj(x).view(*x.shape[:2], -1, head_dim).transpose(1, 2)
        keys = _rope(keys, cos, sin)
        xq, q_cos, q_sin = (at_last(x), at_last(cos), at_last(sin)) if final else (x, cos, sin)
        queries = attn.q_proj(xq).view(*xq.shape[:2], -1, head_dim).transpose(1, 2)
        queries = _rope(queries, q_cos, q_sin)
        if batch:
            attended = nn.functional.scaled_dot_product_attention(
                queries, keys, values, is_causal=not final, scale=attn.scaling, enable_gqa=gqa
            )
        else:
            outputs = []
            for row, (start, n) in enumerate(zip(starts, lengths, strict=True)):
                q = queries[:, :, row : row + 1] if final else queries[:, :, start : start + n]
                outputs.append(
                    nn.functional.scaled_dot_product_attention(
                        q,
                        keys[:, :, start : start + n],
                        values[:, :, start : start + n],
                        is_causal=not final,  # the last token sees its whole row
                        scale=attn.scaling,
                        enable_gqa=gqa,
                    )
                )
            attended = torch.cat(outputs, dim=2)
        attended = attended.transpose(1, 2).reshape(*xq.shape[:2], -1)
        residual = at_last(hidden) if final else hidden
        hidden = residual + attn.o_proj(attended)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    head: Any = lm.lm_head
    logits = head(core.norm(hidden))
    return logits.reshape(len(seqs), -1)
