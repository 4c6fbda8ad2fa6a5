"""``dpm train``: train the emotion speech-LLM backbone on a gold-labelled manifest.

Recipe (reads top to bottom): split conversations into train/validation, fit the built-in
speech tokenizer on the training split (or load one), tokenize every utterance once (cached),
build the model (from scratch, or a base Llama-family checkpoint extended with the stream
vocabulary and trained with LoRA r=64 on all linear layers), train on random windows of the
conversation streams, validate per epoch (WA/UA in utterance and window reads), and keep the
best checkpoint at ``--out`` (a local folder or ``s3://`` prefix, committed manifest-last).

Config (``pipelines.config``): ``--config train.yaml`` with sections ``model`` (BackboneConfig),
``tokenizer`` (SpeechTokenizerConfig), ``train`` (TrainConfig), ``lora`` (r, alpha, dropout),
``memory_loop``, ``memory`` and top-level ``labels``; the named flags override the YAML and
``KEY=VALUE`` overrides (``train.lr=3e-4``) override both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
import time
from typing import Any

import torch

from dpm_worker.corpus import DEFAULT_LABELS
from dpm_worker.errors import ConfigError, LabelError
from dpm_worker.memory import MemoryConfig
from dpm_worker.model import (
    SCRATCH_TEXT_TOKENS,
    BackboneConfig,
    EmotionModel,
    StreamVocab,
    build_backbone,
    extend_base_model,
    load_model,
)
from dpm_worker.speech import (
    ENCODER_KIND,
    EncoderTokenizerConfig,
    SpeechTokenizerConfig,
    fit_encoder_tokenizer,
    fit_speech_tokenizer,
    load_speech_tokenizer,
)
from dpm_worker.training import (
    MemoryLoopConfig,
    TrainConfig,
    autocast_dtype,
    build_stream,
    conversation_ids,
    group_conversations,
    iter_waveforms,
    place_for_training,
    resolve_device,
    split_conversations,
    tokenize_corpus,
    train,
)
from pipelines.config import add_config_arguments, build_dataclass, check_sections, merge_tree
from pipelines.train.outputs import LoraSettings, save, validate

log = logging.getLogger("dpm.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--corpus", required=True, help="gold-labelled manifest (file or folder; local or s3://)"
    )
    parser.add_argument("--out", required=True, help="output model folder (local or s3://)")
    parser.add_argument("--epochs", type=float, help="passes over the training tokens")
    parser.add_argument("--seed", type=int, help="seeds split, tokenizer fit, init and windows")
    parser.add_argument("--max-minutes", type=float, help="wall-time budget of the training loop")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument(
        "--base-model", help="a Llama/Qwen-family checkpoint folder to extend (LoRA)"
    )
    parser.add_argument(
        "--speech-tokenizer", help="a folder with a saved speech tokenizer (skip fitting)"
    )
    parser.add_argument(
        "--init-model", help="continue training a saved model (its tokenizer, vocabulary, weights)"
    )
    parser.add_argument("--model-id", help="name recorded in output tables")
    parser.add_argument("--cache-dir", help="cache for speech codes (default ~/.cache/dpm)")
    parser.add_argument(
        "--fit-utterances", type=int, default=3000, help="utterances used to fit the codebook"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="where to train (default: auto)"
    )
    parser.add_argument("--workers", type=int, help="train with Ray Train on N workers")
    parser.add_argument("--address", help="Ray cluster for --workers (default: embedded local Ray)")
    add_config_arguments(
        parser,
        {
            "model": "BackboneConfig",
            "tokenizer": "SpeechTokenizerConfig, or EncoderTokenizerConfig with type: whisper-units",
            "train": "TrainConfig (epochs, lr, window_tokens, ...)",
            "lora": "r, alpha, dropout, merge",
            "labels": "the emotion labels",
            "memory_loop": "MemoryLoopConfig (the memory-loop stage; absent: skipped)",
            "memory": "MemoryConfig of the memory loop",
            "distributed": "DistributedConfig of --workers (Ray Train)",
        },
        "train.lr=3e-4 lora.r=16",
    )


SECTIONS = ("model", "tokenizer", "train", "lora", "labels", "memory_loop", "memory", "distributed")


def load_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``--config`` YAML, the named flags, then ``KEY=VALUE`` overrides -> validated configs."""
    tree = merge_tree(
        args.config,
        {
            "train.epochs": args.epochs,
            "train.seed": args.seed,
            "train.max_minutes": args.max_minutes,
            "train.threads": args.threads,
            "train.device": args.device,
            "distributed.workers": args.workers,
            "distributed.address": args.address,
            "model.model_id": args.model_id,
        },
        args.overrides,
    )
    check_sections(tree, SECTIONS)
    train_cfg = build_dataclass(TrainConfig, tree.get("train"), "train.")
    # The model's context and history format are the training windows' (one source of truth).
    model_values = dict(tree.get("model") or {})
    model_values["max_context"] = train_cfg.window_tokens
    model_values["history_labels"] = train_cfg.history_labels
    return {
        "model": build_dataclass(BackboneConfig, model_values, "model."),
        "tokenizer": _tokenizer_config(tree.get("tokenizer")),
        "train": train_cfg,
        "lora": build_dataclass(LoraSettings, tree.get("lora"), "lora."),
        "labels": tuple(tree.get("labels") or DEFAULT_LABELS),
        # Stage "memory loop" (pipelines/train/memory_loop.py): present only when configured.
        "memory_loop": (
            build_dataclass(MemoryLoopConfig, tree.get("memory_loop"), "memory_loop.")
            if "memory_loop" in tree
            else None
        ),
        "memory": build_dataclass(MemoryConfig, tree.get("memory"), "memory."),
        # Ray Train (pipelines/train/distributed.py): only with --workers or --address.
        "distributed": _distributed(tree, args),
    }


def _tokenizer_config(values: dict[str, Any] | None) -> Any:
    """``tokenizer.type: whisper-units`` -> the encoder tokenizer's config; else the built-in
    codebook's."""
    if (values or {}).get("type") == ENCODER_KIND:
        return build_dataclass(EncoderTokenizerConfig, values, "tokenizer.")
    return build_dataclass(SpeechTokenizerConfig, values, "tokenizer.")


def _distributed(tree: dict[str, Any], args: argparse.Namespace) -> Any:
    from pipelines.train.distributed import DistributedConfig

    if not (args.workers or args.address):
        return None
    return build_dataclass(DistributedConfig, tree.get("distributed"), "distributed.")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    cfg: TrainConfig = settings["train"]
    torch.set_num_threads(cfg.threads)
    started = time.monotonic()
    progress = not args.no_progress

    ids = conversation_ids(args.corpus)
    train_ids, val_ids = split_conversations(ids, cfg.val_fraction, cfg.seed, cfg.val_group)
    log.info("%d conversations: %d train, %d validation", len(ids), len(train_ids), len(val_ids))

    init = load_model(args.init_model, device="cpu") if args.init_model else None
    if init is not None:
        tokenizer = init.speech_tokenizer
    elif args.speech_tokenizer:
        tokenizer = load_speech_tokenizer(args.speech_tokenizer)
    else:
        tokenizer = fit_tokenizer(
            args.corpus, set(train_ids), settings["tokenizer"], cfg.seed, args.fit_utterances
        )
    fingerprint = getattr(tokenizer, "fingerprint", type(tokenizer).__name__)
    codes = tokenize_corpus(
        args.corpus, tokenizer, fingerprint, cache_root=args.cache_dir, progress=progress
    )

    if init is not None:
        if args.base_model:
            raise ConfigError("--init-model and --base-model are exclusive")
        model, lora = _continue(init, settings["model"]), None
    else:
        model, lora = setup_model(args, settings, tokenizer)
    device = resolve_device(cfg.device)
    model = place_for_training(
        model, device, autocast_dtype(device, cfg.precision),
        gradient_checkpointing=cfg.gradient_checkpointing,
    )  # fmt: skip
    grouped = group_conversations(codes)
    check_labels(grouped, model.vocab.labels, args.corpus)
    streams = {
        cid: build_stream(
            model.vocab, cid, rows, history_labels=cfg.history_labels, aux_previous=cfg.aux_previous
        )
        for cid, rows in grouped.items()
    }
    train_streams = [streams[c] for c in train_ids if c in streams]
    val_streams = [streams[c] for c in val_ids if c in streams]
    log.info(
        "%d training tokens, %d validation utterances, %s parameters",
        sum(len(s.tokens) for s in train_streams),
        sum(len(s.ends) for s in val_streams),
        f"{sum(p.numel() for p in model.model.parameters()):,}",
    )

    record: dict[str, Any] = {
        "command": "dpm train " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["train"] else sys.argv[1:]),
        "corpus": args.corpus,
        "config": {k: _as_record(v) for k, v in settings.items()},
        "split": {"train_conversations": len(train_streams), "validation_conversations": len(val_streams),
                  "train_utterances": sum(len(s.ends) for s in train_streams),
                  "validation_utterances": sum(len(s.ends) for s in val_streams)},
        "evals": [],
    }  # fmt: skip
    if settings["memory_loop"] is not None:
        from pipelines.train.memory_loop import run_memory_loop

        if lora is not None:
            raise ConfigError("the memory loop trains a from-scratch or --init-model backbone")
        return run_memory_loop(
            args, settings, model, grouped, train_streams, val_streams, record, started
        )
    if settings["distributed"] is not None:
        from pipelines.train.distributed import train_distributed

        return train_distributed(args, settings, model, lora, train_streams, val_streams, record)
    best: dict[str, Any] = {"score": -1.0}

    def on_eval(step: int, epoch: float) -> None:
        metrics = validate(model, val_streams, cfg.window_tokens)
        metrics.update(
            step=step, epoch=round(epoch, 3), minutes=round((time.monotonic() - started) / 60, 2)
        )
        record["evals"].append(metrics)
        log.info(
            "epoch %.2f: utterance WA %.3f UA %.3f | window WA %.3f UA %.3f (expressive %s, subtle %s)",
            epoch, metrics["utterance"]["wa"], metrics["utterance"]["ua"], metrics["window"]["wa"],
            metrics["window"]["ua"], _fmt(metrics["utterance"]["expressive_accuracy"]),
            _fmt(metrics["window"]["subtle_accuracy"]),
        )  # fmt: skip
        # Both reads matter (utterance mode and context modes); the window read alone would
        # reward a model that ignores the current utterance in favour of the remembered mood.
        score = 0.5 * (metrics["utterance"]["ua"] + metrics["window"]["ua"])
        if score > best["score"]:
            best["score"] = score
            best["state"] = {k: v.detach().clone() for k, v in model.model.state_dict().items()}
            record["best"] = metrics
            save(model, lora, args.out, record)

    history = train(model, train_streams, cfg, on_eval=on_eval, progress=progress)
    record["loss_history"] = history
    record["training_minutes"] = round((time.monotonic() - started) / 60, 2)
    if "state" in best:  # rewrite the best checkpoint with the complete record
        model.model.load_state_dict(best["state"])
        save(model, lora, args.out, record)
    log.info(
        "done in %.1f min; best mean UA (utterance, window) %.3f -> %s",
        record["training_minutes"],
        best["score"],
        args.out,
    )
    print(
        json.dumps(
            {"out": args.out, "best": record.get("best"), "minutes": record["training_minutes"]},
            indent=2,
        )
    )
    return 0


def _as_record(value: Any) -> Any:
    """A settings value as JSON-able data (dataclass configs become dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def fit_tokenizer(
    corpus: str,
    train_ids: set[str],
    config: SpeechTokenizerConfig | EncoderTokenizerConfig,
    seed: int,
    limit: int,
):
    """Fit the codebook (or the encoder's units) on the first ``limit`` utterances of the
    training split."""
    waves, speakers = [], []
    for utt in iter_waveforms(corpus, train_ids):
        if utt.samples is not None:
            waves.append(utt.samples)
            speakers.append((utt.conversation_id, utt.speaker))
        if len(waves) >= limit:
            break
    log.info("fitting the speech tokenizer on %d utterances", len(waves))
    if isinstance(config, EncoderTokenizerConfig):
        return fit_encoder_tokenizer(waves, config, seed=seed, speakers=speakers)
    return fit_speech_tokenizer(waves, config, seed=seed, speakers=speakers)


def setup_model(args: argparse.Namespace, settings: dict, tokenizer) -> tuple[EmotionModel, Any]:
    """From scratch (default) or a base checkpoint extended with the stream vocabulary + LoRA."""
    model_cfg: BackboneConfig = settings["model"]
    labels = settings["labels"]
    torch.manual_seed(settings["train"].seed)
    if not args.base_model:
        vocab = StreamVocab(
            text_size=len(SCRATCH_TEXT_TOKENS), n_audio=tokenizer.vocab_size, labels=labels
        )
        lm = build_backbone(vocab, model_cfg)
        return _wrap(lm, vocab, tokenizer, model_cfg, None), None
    from peft import LoraConfig, get_peft_model

    base_lm, text_tokenizer, vocab = extend_base_model(
        args.base_model, labels, tokenizer.vocab_size
    )
    lora: LoraSettings = settings["lora"]
    # New token rows must learn from scratch: the embedding and head are trained in full
    # (modules_to_save), the transformer body through LoRA as the paper.
    peft_config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules="all-linear",
        modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM",
    )  # fmt: skip
    peft_model = get_peft_model(base_lm, peft_config)
    return _wrap(peft_model, vocab, tokenizer, model_cfg, text_tokenizer), lora


def _continue(init: EmotionModel, cfg: BackboneConfig) -> EmotionModel:
    """A loaded model made trainable again, renamed and with the new trained context."""
    init.model.requires_grad_(True)
    config = init.model.config
    config.max_position_embeddings = max(config.max_position_embeddings, cfg.max_context)
    return dataclasses.replace(
        init, model_id=cfg.model_id, max_context=cfg.max_context, history_labels=cfg.history_labels
    )


def _wrap(lm, vocab: StreamVocab, tokenizer, cfg: BackboneConfig, text_tokenizer) -> EmotionModel:
    return EmotionModel(
        model=lm, vocab=vocab, speech_tokenizer=tokenizer, model_id=cfg.model_id, fingerprint="training",
        max_context=cfg.max_context, device=torch.device("cpu"), history_labels=cfg.history_labels,
        text_tokenizer=text_tokenizer,
    )  # fmt: skip


def check_labels(grouped: dict[str, list[dict]], labels: tuple[str, ...], corpus: str) -> None:
    """Every gold label must be one of the model's emotion tokens."""
    seen = {
        row["emotion"] for rows in grouped.values() for row in rows if row["emotion"] is not None
    }
    unknown = sorted(seen - set(labels))
    if unknown:
        raise LabelError(
            f"corpus labels {unknown} are not in the model's label set {labels}", corpus
        )
