"""``dpm train --workers N``: backbone training across processes or machines with Ray Train.

The driver does everything up to the model (split, tokenizer, token cache, streams, the
initial weights) exactly as the single-process path, saves the initial model as a model folder
and puts the streams into Ray's object store. Each Ray Train worker then loads the same
initial model, wraps it for data parallelism (``pipelines/train/sharding.py``: DDP by
default, FSDP2 as ``strategy: fsdp`` for bases that do not fit one device) and runs the steps.

Data: every step, every worker draws the same global batch of ``batch_size * workers`` windows
from the same seeded generator and trains on its own slice, so N workers x batch B follow one
worker x batch N*B step by step (the gradients are averaged over the slices by DDP).

Checkpoints: every ``checkpoint_every`` steps rank 0 writes a model folder (loadable by
``dpm eval``) plus the optimizer, auxiliary heads, step and sampler state, and reports it to
Ray Train, which keeps it under ``storage`` (a local folder or ``s3://``). When a worker dies,
Ray Train restarts the group (``max_failures``) and every worker resumes from the latest
checkpoint. The final checkpoint's model is committed at ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpm_worker.errors import ConfigError
from dpm_worker.model import IGNORE, EmotionModel, load_model, save_model
from dpm_worker.training import (
    AuxHeads,
    ConversationStream,
    TrainConfig,
    compute_loss,
    isolate_rows,
    lr_at,
    make_batch,
    sample_starts,
)
from pipelines.label import connect
from pipelines.train.outputs import LoraSettings, save, validate
from pipelines.train.sharding import (
    clip_grad_norm,
    full_model_state,
    full_optimizer_state,
    load_optimizer_state,
    wrap_model,
)

log = logging.getLogger("dpm.train")
TRAIN_STATE = "train_state.pt"
STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistributedConfig:
    """How ``dpm train`` spreads over Ray Train workers (YAML section ``distributed``).

    Args:
        workers: data-parallel workers (1 still runs through Ray Train).
        address: a Ray cluster to join (None: an embedded local Ray, or ``$RAY_ADDRESS``).
        strategy: ``ddp`` (a full copy per worker) or ``fsdp`` (sharded weights and states).
        cpus_per_worker: CPUs reserved per worker (fractions allowed on a laptop).
        use_gpu: one GPU per worker (None: when the cluster has GPUs).
        storage: where Ray Train keeps checkpoints, local or ``s3://`` (None: ``<out>.ray``
            for a local ``--out``, else ``~/.cache/dpm/ray_train``).
        checkpoint_every: steps between checkpoints (the last step always checkpoints).
        keep_checkpoints: checkpoints kept in storage.
        max_failures: worker-group restarts from the latest checkpoint before giving up.
        timeout_s: seconds a collective may block (a dead peer ends the step after this).
    """

    workers: int = 1
    address: str | None = None
    strategy: str = "ddp"
    cpus_per_worker: float = 1.0
    use_gpu: bool | None = None
    storage: str | None = None
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_failures: int = 2
    timeout_s: int = 600

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"distributed.workers must be >= 1, got {self.workers}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"distributed.strategy must be one of {STRATEGIES}, got {self.strategy!r}"
            )
        if not 0 < self.cpus_per_worker <= 1024:
            raise ConfigError(
                f"distributed.cpus_per_worker must be in (0, 1024], got {self.cpus_per_worker}"
            )
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ConfigError(
                "distributed.checkpoint_every and keep_checkpoints must be >= 1, got "
                f"{self.checkpoint_every} and {self.keep_checkpoints}"
            )
        if self.max_failures < 0 or self.timeout_s < 1:
            raise ConfigError(
                f"distributed.max_failures must be >= 0 and timeout_s >= 1, got "
                f"{self.max_failures} and {self.timeout_s}"
            )


def train_distributed(
    args: argparse.Namespace,
    settings: dict[str, Any],
    model: EmotionModel,
    lora: LoraSettings | None,
    train_streams: list,
    val_streams: list,
    record: dict[str, Any],
) -> int:
    """``--workers N``: train through Ray Train, validate the result once, commit it."""
    if lora is not None:
        raise ConfigError("--workers trains from scratch or --init-model; not --base-model yet")
    started = time.monotonic()
    trained, metrics = train_with_ray(
        model, train_streams, settings["train"], settings["distributed"], args.out
    )
    record["best"] = validate(trained, val_streams, settings["train"].window_tokens)
    record["loss_history"] = metrics.get("loss_history", [])
    record["ray_train"] = {k: metrics.get(k) for k in ("step", "resumed_from", "checkpoint")}
    record["training_minutes"] = round((time.monotonic() - started) / 60, 2)
    save(trained, None, args.out, record)
    print(json.dumps({"out": args.out, "best": record["best"], **record["ray_train"]}, indent=2))
    return 0


def total_steps(streams: list[ConversationStream], cfg: TrainConfig, workers: int) -> int:
    """Optimizer steps of a run: epochs over the tokens at the global batch size."""
    tokens = sum(len(s.tokens) for s in streams)
    per_epoch = max(1, math.ceil(tokens / (cfg.window_tokens * cfg.batch_size * workers)))
    return max(1, int(cfg.epochs * per_epoch))


def train_with_ray(
    model: EmotionModel,
    train_streams: list[ConversationStream],
    cfg: TrainConfig,
    dist: DistributedConfig,
    out: str,
) -> tuple[EmotionModel, dict[str, Any]]:
    """Train ``model`` on ``train_streams`` with Ray Train; return the trained model (CPU).

    Args:
        model: the initial model (from scratch or ``--init-model``; every parameter trains).
        train_streams: the training conversations.
        cfg: the training settings (``batch_size`` is per worker).
        dist: the workers, strategy and checkpointing.
        out: the final model's URI (names the default checkpoint storage).

    Returns:
        ``(model, metrics)``: metrics of the final report (``step``, ``resumed_from``,
        ``loss_history``, the loss parts) plus ``checkpoint``, the final checkpoint's path.
    """
    import ray

    started_ray = not ray.is_initialized()
    if started_ray:
        connect(dist.address)
    try:
        return _fit(model, train_streams, cfg, dist, out)
    finally:
        if started_ray:
            ray.shutdown()  # only the Ray this call started (or its connection)


def _fit(
    model: EmotionModel,
    train_streams: list[ConversationStream],
    cfg: TrainConfig,
    dist: DistributedConfig,
    out: str,
) -> tuple[EmotionModel, dict[str, Any]]:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = dist.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= dist.workers
    storage = dist.storage or _default_storage(out)
    init_dir = Path(tempfile.mkdtemp(prefix="dpm-train-init-"))
    if "://" in storage:
        init_uri = f"{storage.rstrip('/')}/init-{init_dir.name}"
    else:
        init_uri = str(Path(storage).expanduser().resolve() / f"init-{init_dir.name}")
    save_model(model, init_uri)  # every worker starts from these exact weights
    loop_config = {
        "init_model": init_uri,
        "streams": ray.put(train_streams),
        "train": dataclasses.asdict(cfg),
        "strategy": dist.strategy,
        "checkpoint_every": dist.checkpoint_every,
        "total_steps": total_steps(train_streams, cfg, dist.workers),
    }
    trainer = TorchTrainer(
        train_loop_per_worker=worker_loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=dist.timeout_s),
        scaling_config=ScalingConfig(
            num_workers=dist.workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": dist.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=f"dpm-train-{init_dir.name.rsplit('-', 1)[-1]}",
            storage_path=storage,
            failure_config=FailureConfig(max_failures=dist.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=dist.keep_checkpoints),
        ),
    )
    result = trainer.fit()
    if result.error is not None or result.checkpoint is None:
        raise RuntimeError(f"Ray Train run failed: {result.error}")
    with result.checkpoint.as_directory() as folder:
        trained = load_model(str(Path(folder) / "model"), device="cpu", dtype="float32")
    metrics = dict(result.metrics or {})
    metrics["checkpoint"] = result.checkpoint.path
    trained = dataclasses.replace(
        trained, model_id=model.model_id, history_labels=model.history_labels
    )
    return trained, metrics


def _default_storage(out: str) -> str:
    if "://" in out:
        return str(Path.home() / ".cache" / "dpm" / "ray_train")
    return str(Path(out).expanduser().resolve()) + ".ray"


def worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: load the initial model, resume if a checkpoint exists, train."""
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(1)
    cfg = TrainConfig(**config["train"])
    device = ray.train.torch.get_device()
    model = load_model(config["init_model"], device=device, dtype="float32")
    model.model.requires_grad_(True)
    streams = ray.get(config["streams"])
    hidden = int(model.model.get_input_embeddings().weight.size(1))  # type: ignore[operator]
    torch.manual_seed(cfg.seed)  # the same auxiliary-head init on every worker
    aux = AuxHeads(hidden, len(model.vocab.labels), cfg.aux_previous).to(device)
    rng = np.random.default_rng(cfg.seed)
    start_step, resumed_from = 0, 0
    optimizer_state: Any = None
    aux_state: Any = None
    history: list[dict] = []  # every step's mean losses since the run began
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / TRAIN_STATE, weights_only=True)
            saved = load_model(str(Path(folder) / "model"), device=device, dtype="float32")
            model.model.load_state_dict(saved.model.state_dict())
        aux.load_state_dict(state["aux"])
        rng.bit_generator.state = state["rng"]
        start_step = resumed_from = int(state["step"])
        optimizer_state, aux_state = state["optimizer"], state["aux_optimizer"]
        history = state["history"]
    fsdp = config["strategy"] == "fsdp"
    # FSDP shards the LM in place: rank 0 saves the gathered weights through a CPU copy.
    template = copy.deepcopy(model.model).cpu() if fsdp and rank == 0 else None
    lm = wrap_model(model.model, config["strategy"])
    # DDP/FSDP forward the causal LM's call signature; compute_loss only calls the model.
    wrapped = dataclasses.replace(model, model=lm, device=device)  # type: ignore[arg-type]
    lm_params = [p for p in lm.parameters() if p.requires_grad]
    params = lm_params + list(aux.parameters())
    # One AdamW per part (the same per-tensor updates as one over both): the LM's state is
    # gathered and restored per parameter name, which the heads outside the LM do not have.
    # No foreach: it cannot batch FSDP's sharded tensors.
    optimizer = torch.optim.AdamW(
        lm_params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False
    )
    aux_optimizer = torch.optim.AdamW(aux.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if optimizer_state is not None:
        load_optimizer_state(lm, optimizer, optimizer_state)
        aux_optimizer.load_state_dict(aux_state)
    total = config["total_steps"]
    lm.train()
    for step in range(start_step, total):
        for group in optimizer.param_groups + aux_optimizer.param_groups:
            group["lr"] = lr_at(step, total, cfg)
        # The same global batch on every worker; each trains on its own slice of it.
        picked, starts = sample_starts(
            streams, cfg.window_tokens, cfg.batch_size * world, rng, cfg.aligned_fraction
        )
        starts, lengths = isolate_rows(picked, starts, cfg.isolated_fraction, rng)
        mine = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
        batch = make_batch(
            model.vocab, picked[mine], starts[mine], cfg.window_tokens,
            history_labels=cfg.history_labels, label_noise=cfg.label_noise, rng=rng,
            lengths=None if lengths is None else lengths[mine],
        )  # fmt: skip
        counts = _target_counts(batch)
        totals = _sum_over_workers(counts)
        # A slice's means weighted by its share of the global targets: DDP's average of the
        # workers' gradients is then the gradient of the whole batch's means.
        scales = {k: counts[k] * world / max(totals[k], 1.0) for k in counts}
        loss, parts = compute_loss(
            wrapped, batch, cfg, aux if cfg.aux_previous else None, scales=scales
        )
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _average_grads(aux, world)  # DDP averages the LM's gradients; the heads are outside it
        clip_grad_norm(params, cfg.grad_clip)
        optimizer.step()
        aux_optimizer.step()
        weighted = _sum_over_workers({k: v * counts[k] for k, v in parts.items()})
        mean = {k: v / max(totals[k], 1.0) for k, v in weighted.items()}
        mean["loss"] = cfg.audio_weight * mean["L_a"] + cfg.emotion_weight * mean["L_e"]
        if "L_aux" in mean:
            mean["loss"] += cfg.aux_weight * mean["L_aux"]
        history.append({"step": step + 1, **mean})
        last = step + 1 == total
        metrics: dict[str, Any] = {"step": step + 1, "resumed_from": resumed_from, **mean}
        if (step + 1) % config["checkpoint_every"] == 0 or last:
            metrics["loss_history"] = history
            # Every worker takes part in gathering the full states (FSDP holds shards).
            lm_state = full_model_state(lm) if fsdp else {}
            optimizer_full = full_optimizer_state(lm, optimizer)
            with tempfile.TemporaryDirectory(prefix="dpm-ckpt-") as tmp:
                report_checkpoint = None
                if rank == 0:
                    plain: Any = getattr(lm, "module", lm) if template is None else template
                    if template is not None:
                        template.load_state_dict(lm_state)
                    cpu_model = dataclasses.replace(model, model=plain)
                    save_model(cpu_model, str(Path(tmp) / "model"))
                    torch.save(
                        {
                            "step": step + 1,
                            "aux": aux.state_dict(),
                            "optimizer": optimizer_full,
                            "aux_optimizer": aux_optimizer.state_dict(),
                            "rng": rng.bit_generator.state,
                            "history": history,
                        },
                        Path(tmp) / TRAIN_STATE,
                    )
                    report_checkpoint = Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=report_checkpoint)


def _average_grads(module: torch.nn.Module, world: int) -> None:
    if world == 1:
        return
    import torch.distributed as tdist

    for param in module.parameters():
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        tdist.all_reduce(param.grad)
        param.grad /= world


def _target_counts(batch: Any) -> dict[str, float]:
    """How many targets each loss part of this worker's slice averages over."""
    return {
        "L_a": float((batch.audio_targets != IGNORE).sum()),
        "L_e": float((batch.emotion_targets != IGNORE).sum()),
        "L_aux": float((batch.aux_targets != IGNORE).sum()),
    }


def _sum_over_workers(values: dict[str, float]) -> dict[str, float]:
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()):
        return dict(values)
    names = sorted(values)
    tensor = torch.tensor([values[n] for n in names], dtype=torch.float64)
    tdist.all_reduce(tensor)
    return {n: float(v) for n, v in zip(names, tensor.tolist(), strict=True)}
