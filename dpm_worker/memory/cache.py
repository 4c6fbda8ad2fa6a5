"""``history_cache: reuse``: keep each conversation slot's keys and values of its history.

Recompute (the reference) runs ``history[-n_r:] + tokens_i`` through the model for every read,
although only ``tokens_i`` (about 75 tokens against about 256 of history) is new. Reuse keeps,
per slot, the keys and values of the last ``n_r`` history tokens from the passes that already
computed them and runs only the new tokens, attending to them.

What differs from recompute, and why it is measured rather than assumed equal:

- positions: cached tokens keep the absolute positions they were computed at and new tokens
  continue from there; with RoPE attention depends only on position differences, which are
  the same as recompute's (which restarts positions at the window's start);
- context: a cached token's keys and values in layers >= 2 were computed when it could see
  the conversation before the current window, whereas recompute lets the window's first token
  see nothing. So reuse is the model reading a sliding window of states, not tokens.

This context is the whole of the difference, and no cache can remove it: recompute's window
starts one utterance later at every read, so every kept token's keys and values above the
first layer change at every read (they attend only inside the window). Positions are not a
cause (RoPE sees only differences; the first reads of a conversation, before the window
slides, agree within 5.4e-7 on the held-out corpus), nor stale adapters (the cached read runs
with the memory off). Measured on the 40 held-out conversations of issue 11 (2,768 utterances,
default ``prior`` memory, 8 slots): UA 0.3375 with reuse against 0.3428 with recompute, a
paired conversation-bootstrap 95% interval of [-1.13, +0.07] points for the difference, 96.6%
identical labels, twice as fast; on issue 10's 6 conversations -1.3 points in ``dpm`` and
+1.2 in ``window`` mode.

Only passes with the memory off can reuse: a memory write changes every adapted layer, which
would invalidate every cached key and value. So reuse serves the modes without memory and the
``prior`` memory with ``prior_input: speaker``, whose read at ``<audio_end>`` runs with the
memory off (its write is at a lone speaker token); other write targets recompute.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class HistoryCache:
    """Per slot: the keys and values of the last ``keep`` history tokens and the next position.

    Args:
        lm: the backbone (a transformers causal LM that accepts ``past_key_values``).
        keep: history tokens kept per slot (n_r; ``max_context`` in ``full`` mode).
    """

    def __init__(self, lm: nn.Module, keep: int) -> None:
        self.lm, self.keep = lm, keep
        self._kv: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._next: dict[int, int] = {}

    def drop(self, slot: int) -> None:
        """Forget a slot's history (its conversation ended)."""
        self._kv.pop(slot, None)
        self._next.pop(slot, None)

    def cached(self, slot: int) -> int:
        """How many history tokens ``slot`` has cached."""
        kv = self._kv.get(slot)
        return 0 if not kv else int(kv[0][0].shape[2])

    def last_logits(self, slots: Sequence[int], new_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Run each slot's new tokens after its cached history; ``[N, V]`` logits at the last
        new token of each row. The new tokens then join each slot's cache (cropped to ``keep``).
        """
        device = next(self.lm.parameters()).device
        n = len(slots)
        past = [self.cached(s) for s in slots]
        width_past, width_new = max(past), max(len(ids) for ids in new_ids)
        mask = torch.zeros((n, width_past + width_new), dtype=torch.long)
        ids = torch.zeros((n, width_new), dtype=torch.long)
        positions = torch.zeros((n, width_new), dtype=torch.long)
        for r, (slot, new) in enumerate(zip(slots, new_ids, strict=True)):
            mask[r, width_past - past[r] : width_past] = 1
            mask[r, width_past + width_new - len(new) :] = 1
            ids[r, width_new - len(new) :] = torch.tensor(list(new), dtype=torch.long)
            start = self._next.get(slot, 0)
            positions[r, width_new - len(new) :] = torch.arange(start, start + len(new))
        from transformers import DynamicCache

        cache = DynamicCache()
        if width_past:
            layers = []
            for index in range(len(self._kv[next(s for s in slots if self.cached(s))])):
                keys, values = [], []
                for r, slot in enumerate(slots):
                    k, v = self._layer(slot, index, width_past, past[r])
                    keys.append(k)
                    values.append(v)
                layers.append((torch.cat(keys), torch.cat(values)))
            cache = DynamicCache(ddp_cache_data=layers)
        with torch.no_grad():
            out = self.lm(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                cache=cache,  # updated in place with the new tokens
                use_cache=True,
                logits_to_keep=1,
            )
        for r, (slot, new) in enumerate(zip(slots, new_ids, strict=True)):
            kept: list[tuple[torch.Tensor, torch.Tensor]] = []
            for cached in cache.layers:
                k = cached.keys[r : r + 1, :, -len(new) :]  # type: ignore[union-attr,index]
                v = cached.values[r : r + 1, :, -len(new) :]  # type: ignore[union-attr,index]
                if past[r]:
                    old_k, old_v = self._kv[slot][len(kept)]
                    k, v = torch.cat([old_k, k], dim=2), torch.cat([old_v, v], dim=2)
                kept.append((k[:, :, -self.keep :], v[:, :, -self.keep :]))
            self._kv[slot] = kept if self.keep else []
            self._next[slot] = self._next.get(slot, 0) + len(new)
        return out.logits[:, -1]

    def _layer(
        self, slot: int, layer: int, width: int, length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Slot ``slot``'s cached keys and values of ``layer``, left-padded to ``width``."""
        if length:
            k, v = self._kv[slot][layer]
        else:
            ref = self._kv[next(iter(s for s in self._kv if self._kv[s]))][layer][0]
            k = v = ref.new_zeros((1, ref.shape[1], 0, ref.shape[3]))
        if length < width:
            pad = k.new_zeros((1, k.shape[1], width - length, k.shape[3]))
            k, v = torch.cat([pad, k], dim=2), torch.cat([pad, v], dim=2)
        return k, v
