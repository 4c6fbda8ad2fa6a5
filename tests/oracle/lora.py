"""The reference memory: the temporary LoRA as peft's own adapters, one optimizer per slot.

The product's memory is :class:`dpm_worker.memory.BatchedLoraMemory` (slots stacked in one
layer); this is the independent implementation it is tested against (same seeded adapters).

DESIGN section 5. The backbone stays frozen. A low-rank adapter (peft LoRA) is injected into it
once; for every conversation its weights are copied back to their initial values in place and
its optimizer state is cleared, so the model is never re-wrapped or reloaded.

Why ``B = 0`` at reset: a LoRA adds ``B @ A @ x`` to each target layer, so with ``B = 0`` the
adapted model computes exactly the backbone's outputs (adding a zero tensor is exact in floating
point). A fresh conversation therefore starts from the backbone itself, bit for bit.

Precision: the adapters, their gradients and optimizer state are float32 whatever the backbone's
dtype. peft's ``inject_adapter_in_model`` gives an adapter the dtype of the layer it wraps, so
under a bf16 backbone (CUDA) the memory would be bf16: 8 bits of mantissa, so an update smaller
than about 1/256 of a weight rounds away and a write at the paper's lr 5e-5 silently does
nothing. The adapters are therefore cast to float32 after injection. peft's LoRA layer then casts
its input to the adapter's dtype, computes ``B @ A @ x`` in float32, adds it to the bf16 base
output and casts the sum back to the base dtype. Chosen over autocast: the frozen backbone's
arithmetic stays untouched (bit for bit when the memory is off or reset, on every device), and
it is what peft's own ``PeftModel`` does with ``autocast_adapter_dtype``.

Scope ``speaker`` keeps one adapter per speaker slot of the conversation (peft multi-adapter,
switched with ``set_adapter``); each is written and read only on its speaker's turns, because a
single shared adapter was measured to copy one speaker's mood onto the other (issue 4).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dpm_worker.errors import ConfigError
from dpm_worker.memory import MEMORY_DTYPE, MemoryConfig
from dpm_worker.model import IGNORE

ADAPTER_PREFIX = "dpm_memory"
# Unique adapter names per memory object: two memories on one backbone never share adapters.
_MEMORY_IDS = itertools.count()


@dataclass
class _Slot:
    """One temporary adapter: its parameters, their initial values and its optimizer."""

    name: str
    params: list[nn.Parameter]
    initial: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    steps: int = 0


class TemporaryLoraMemory:
    """The temporary LoRA adapters of one frozen causal LM.

    Adapters are injected once per slot (slot 0 only in ``conversation`` scope; one slot per
    speaker in ``speaker`` scope, created the first time a speaker slot is used) and then kept
    for the life of the model: ``reset`` only copies values.

    Args:
        lm: the backbone (a transformers causal LM); mutated in place: its target linear
            layers become peft LoRA layers and its own parameters are frozen.
        config: the memory's hyperparameters.
    """

    def __init__(self, lm: nn.Module, config: MemoryConfig) -> None:
        self.lm = lm
        self.config = config
        self._slots: dict[int, _Slot] = {}
        self._prefix = f"{ADAPTER_PREFIX}{next(_MEMORY_IDS)}_"
        self._layers: list[Any] = []  # peft LoraLayer modules (typed loosely: peft mixins)
        for param in lm.parameters():
            param.requires_grad_(False)
        lm.train(False)  # dropout off: the memory must be deterministic
        # Slot 0 exists from the start, so a config that fits no layer fails here, not mid-run.
        self._slots[0] = self._create_slot(0)
        self.reset()

    # -- lifecycle ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything: every adapter back to its initial values, optimizer state cleared."""
        with torch.no_grad():
            for slot in self._slots.values():
                for param, init in zip(slot.params, slot.initial, strict=True):
                    param.copy_(init)
                    param.grad = None
                slot.optimizer.state.clear()
                slot.steps = 0
        self.enable(False)

    def enable(self, enabled: bool) -> None:
        """Switch the adapters on or off; off, the model computes the backbone alone (faster)."""
        if self._layers and self._layers[0].disable_adapters == (not enabled):
            return
        for module in self._layers:
            module.enable_adapters(enabled)

    def close(self) -> None:
        """Remove this memory's adapters from the backbone (the backbone is then as loaded)."""
        from peft.functional import delete_adapter

        configs = getattr(self.lm, "peft_config", {})
        with warnings.catch_warnings():
            # peft warns when the active adapter goes; the next memory activates its own.
            warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
            for slot in self._slots.values():
                delete_adapter(self.lm, slot.name, prefix="lora_")
                configs.pop(slot.name, None)
        self._slots.clear()
        self._layers = []

    def activate(self, slot: int) -> None:
        """Make ``slot``'s adapter the one used by forward passes, creating it on first use."""
        if slot not in self._slots:
            self._slots[slot] = self._create_slot(slot)
        name = self._slots[slot].name
        # The layers all share one state, so the first one tells whether a switch is needed;
        # switching walks every adapted layer, which is not free on every utterance.
        first = self._layers[0]
        switch, enable = first.active_adapters != [name], first.disable_adapters
        for module in self._layers if switch or enable else ():
            if switch:
                module.set_adapter(name)
            if enable:
                module.enable_adapters(True)

    def slot_for(self, speaker_slot: int) -> int:
        """The adapter slot an utterance of ``speaker_slot`` writes to and reads from."""
        return speaker_slot if self.config.scope == "speaker" else 0

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every adapter parameter (the only tensors a write may change)."""
        return [p for slot in self._slots.values() for p in slot.params]

    # -- state (checkpoints) ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every written slot's adapter values, optimizer state and step count, as plain tensors.

        Slots never written since the last ``reset`` are left out (they equal their initial
        values). Keys are ``slot.<k>.param.<i>``, ``slot.<k>.opt.<i>.<name>`` and
        ``slot.<k>.steps``; the tensors are detached CPU copies, so the caller may store them
        while labeling goes on. :meth:`load_state_dict` restores them into any memory built
        with the same config on the same backbone shapes.
        """
        out: dict[str, torch.Tensor] = {}
        for k, slot in sorted(self._slots.items()):
            if slot.steps == 0 and not slot.optimizer.state:
                continue
            out[f"slot.{k}.steps"] = torch.tensor(slot.steps, dtype=torch.int64)
            for i, param in enumerate(slot.params):
                out[f"slot.{k}.param.{i}"] = param.detach().cpu().clone()
                for name, value in slot.optimizer.state.get(param, {}).items():
                    if value is None:
                        continue
                    if not isinstance(value, torch.Tensor):
                        raise ConfigError(f"optimizer state {name!r} is not a tensor: {value!r}")
                    out[f"slot.{k}.opt.{i}.{name}"] = value.detach().cpu().clone()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Make this memory exactly the one :meth:`state_dict` described (after a ``reset``).

        Raises:
            ConfigError: a tensor's key or shape does not fit this memory's adapters.
        """
        self.reset()
        by_slot: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            parts = key.split(".", 2)
            if len(parts) != 3 or parts[0] != "slot" or not parts[1].isdigit():
                raise ConfigError(f"memory state key {key!r} is not slot.<k>.<field>")
            by_slot.setdefault(int(parts[1]), {})[parts[2]] = value
        with torch.no_grad():
            for k, fields in sorted(by_slot.items()):
                if k not in self._slots:
                    self._slots[k] = self._create_slot(k)
                slot = self._slots[k]
                for i, param in enumerate(slot.params):
                    saved = fields.get(f"param.{i}")
                    if saved is None or saved.shape != param.shape:
                        raise ConfigError(
                            f"memory state slot {k} param {i}: expected shape "
                            f"{tuple(param.shape)}, got "
                            f"{None if saved is None else tuple(saved.shape)}"
                        )
                    param.copy_(saved.to(device=param.device, dtype=param.dtype))
                    prefix = f"opt.{i}."
                    opt = {n[len(prefix) :]: v for n, v in fields.items() if n.startswith(prefix)}
                    if opt:
                        # AdamW keeps its scalar step on the CPU (not capturable); moments follow
                        # their parameter's device.
                        slot.optimizer.state[param] = {
                            n: v.clone() if v.dim() == 0 else v.to(param.device).clone()
                            for n, v in opt.items()
                        }
                slot.steps = int(fields["steps"]) if "steps" in fields else 0
        self.enable(False)

    # -- write ----------------------------------------------------------------------------------

    def write(
        self,
        slot: int,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        emotion_ids: list[int] | None = None,
    ) -> torch.Tensor | None:
        """Train ``slot``'s adapter ``steps_per_utterance`` optimizer steps on one input.

        Args:
            slot: the adapter slot (see ``slot_for``).
            input_ids: ``[1, T]`` token ids (history window + utterance, ending in
                ``<audio_end>``).
            labels: ``[1, T]``; ``-100`` everywhere the loss is off. Label at position t is
                predicted from the tokens before t (the usual causal shift).
            emotion_ids: the emotion tokens' ids; needed by ``write_target="audio+prediction"``,
                which reads the emotion at the last position from the first step's forward
                pass (the memory *before* this write) and adds ``emotion_weight * confidence *
                CE(emotion logits, predicted label)`` to the loss when the confidence reaches
                ``confidence_gate``.

        Returns:
            ``audio+prediction``: the emotion probabilities read before the write
            (``[n_labels]``); otherwise None.
        """
        cfg = self.config
        self.activate(slot)
        state = self._slots[slot]
        encode = cfg.write_target == "audio+prediction"
        if encode and not emotion_ids:
            raise ConfigError("write_target 'audio+prediction' needs the emotion token ids")
        positions = torch.nonzero(labels[0] != IGNORE).flatten()
        if positions.numel() == 0 or int(positions.min()) < 1:
            raise ConfigError("a memory write needs labels at positions >= 1")
        # Only logits from the first labelled position on are needed; skipping the rest saves
        # the lm_head matmul over the whole history window (the largest single matmul).
        first = int(positions.min())
        keep = int(labels.shape[1]) - first + 1
        targets = labels[:, first:].reshape(-1)
        read: torch.Tensor | None = None
        for _ in range(cfg.steps_per_utterance):
            logits = self.lm(input_ids=input_ids, logits_to_keep=keep).logits[0]
            # logits[j] sits at position first - 1 + j and predicts the token at first + j.
            loss = nn.functional.cross_entropy(logits[:-1].float(), targets, ignore_index=-100)
            if encode:
                emotion = logits[-1, emotion_ids].float()
                first_read = torch.softmax(emotion.detach(), dim=-1) if read is None else read
                read = first_read  # the memory before this write: the read of step 0
                confidence, label = first_read.max(dim=-1)
                if float(confidence) >= cfg.confidence_gate:
                    loss = loss + cfg.emotion_weight * confidence * nn.functional.cross_entropy(
                        emotion, label
                    )
            self._step(state, loss)
        if encode and read is None:  # zero steps: read without writing
            with torch.no_grad():
                last = self.lm(input_ids=input_ids, logits_to_keep=1).logits[0, -1]
            read = torch.softmax(last[emotion_ids].float(), dim=-1)
        return read

    def write_prior(
        self,
        slot: int,
        prefix_ids: torch.Tensor,
        base_logits: torch.Tensor,
        target: torch.Tensor,
        emotion_ids: list[int],
    ) -> torch.Tensor:
        """``prior`` write: teach ``slot``'s adapter the emotion its speaker is in.

        The prior is read where the utterance starts, at its speaker token (the last position
        of ``prefix_ids``, i.e. history + ``<spk>``): it is the change the adapter makes to the
        backbone's emotion logits there, ``delta = logits_memory - logits_backbone``. A reset
        adapter changes nothing, so the prior of a new speaker is uniform (delta = 0). The
        write trains ``softmax(delta)`` toward ``target`` (the backbone's own read of the
        utterance) with ``steps_per_utterance`` optimizer steps, so the prior follows the emotions
        read in the speaker's recent turns, at a rate set by the lr.

        Args:
            slot: the adapter slot (see ``slot_for``).
            prefix_ids: ``[1, P]`` ending in the utterance's speaker token (the token alone, or
                after the history window: ``prior_input``).
            base_logits: ``[n_labels]`` the backbone's emotion logits at that position
                (memory off).
            target: ``[n_labels]`` probabilities to learn (the backbone's read of the utterance).
            emotion_ids: the emotion tokens' ids.

        Returns:
            The prior before this write (log-probabilities, ``[n_labels]``): the memory of the
            speaker's earlier turns only.
        """
        cfg = self.config
        self.activate(slot)
        state = self._slots[slot]
        base = base_logits.detach().float()
        target = target.detach().float()
        prior: torch.Tensor | None = None
        for _ in range(cfg.steps_per_utterance):
            logits = self.lm(input_ids=prefix_ids, logits_to_keep=1).logits[0, -1, emotion_ids]
            delta = logits.float() - base
            if prior is None:
                prior = torch.log_softmax(delta.detach(), dim=-1)
            self._step(state, -(target * torch.log_softmax(delta, dim=-1)).sum())
        if prior is None:  # zero steps: read without writing
            with torch.no_grad():
                logits = self.lm(input_ids=prefix_ids, logits_to_keep=1).logits[0, -1, emotion_ids]
            prior = torch.log_softmax(logits.float() - base, dim=-1)
        return prior

    def _step(self, state: _Slot, loss: torch.Tensor) -> None:
        """One optimizer step of ``state``'s adapter on ``loss`` (warm-up lr; grads freed)."""
        for group in state.optimizer.param_groups:
            group["lr"] = self._lr(state.steps)
        # Cleared first too: a caller's backward pass may have left gradients on the adapter.
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.steps += 1

    def _lr(self, step: int) -> float:
        warm = self.config.warmup_steps
        return self.config.lr * min(1.0, (step + 1) / (warm + 1)) if warm else self.config.lr

    # -- internals ------------------------------------------------------------------------------

    def _create_slot(self, slot: int) -> _Slot:
        from peft import LoraConfig
        from peft.functional import inject_adapter_in_model

        cfg = self.config
        name = f"{self._prefix}{slot}"
        lora = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft accepts float alphas
            target_modules=list(cfg.target_modules),
            lora_dropout=0.0,
            bias="none",
        )
        with warnings.catch_warnings():
            # peft warns that a second adapter joins the first: that is the speaker scope.
            warnings.filterwarnings("ignore", message=".*peft_config.*")
            # An adapter on a tied lm_head: peft warns about merging; a memory is never merged.
            warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
            try:
                inject_adapter_in_model(lora, self.lm, adapter_name=name)
            except ValueError as exc:  # peft's "target modules not found"
                raise ConfigError(
                    f"memory.target_modules {cfg.target_modules} matched no layer of the "
                    f"backbone: {exc}"
                ) from exc
        from peft.tuners.lora import LoraLayer

        self._layers = [m for m in self.lm.modules() if isinstance(m, LoraLayer)]
        params: list[nn.Parameter] = []
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + slot)
        with torch.no_grad():
            for module in self._layers:
                if name not in module.lora_A:
                    continue
                # fp32 under a bf16 backbone (module docstring: "Precision"); in place, so the
                # peft ModuleDicts keep these very modules.
                module.lora_A[name].to(MEMORY_DTYPE)
                module.lora_B[name].to(MEMORY_DTYPE)
                a = module.lora_A[name].weight
                b = module.lora_B[name].weight
                # Seeded init, independent of the global RNG and of creation order.
                bound = 1.0 / math.sqrt(a.shape[1])
                a.copy_(torch.empty(a.shape).uniform_(-bound, bound, generator=generator))
                b.zero_()
                params.extend([a, b])
        if not params:
            raise ConfigError(
                f"memory.target_modules {cfg.target_modules} matched no layer of the backbone"
            )
        for param in params:
            param.requires_grad_(True)
        optimizer: torch.optim.Optimizer
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            optimizer = torch.optim.AdamW(
                params,
                lr=cfg.lr,
                betas=cfg.betas,
                weight_decay=cfg.weight_decay,
                foreach=True,  # one fused kernel per state tensor list, not a loop per parameter
            )
        initial = [p.detach().clone() for p in params]
        return _Slot(name=name, params=params, initial=initial, optimizer=optimizer)
