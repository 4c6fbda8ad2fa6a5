"""``dpm train`` stage with the memory loop inside (config section ``memory_loop``).

The backbone (usually ``--init-model``, a model trained the plain way) is trained through the
``dpm`` labeling loop: every training conversation is labeled in order with the temporary LoRA
memory of config section ``memory`` writing on each utterance, and each read's cross-entropy
against the gold label trains the backbone (``dpm_worker/training/memory_loop.py`` says why and
how; with ``memory_loop.order: 2`` the gradient also flows through the writes,
``dpm_worker/training/second_order.py``). After every epoch the validation conversations are
labeled in ``window`` and ``dpm`` modes; the checkpoint with the best ``dpm`` UA is kept at
``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

from dpm_worker.model import EmotionModel
from dpm_worker.training import ConversationStream, MemoryLoopTrainer, training_conversation
from pipelines.train.outputs import save

log = logging.getLogger("dpm.train")


def run_memory_loop(
    args: argparse.Namespace,
    settings: dict[str, Any],
    model: EmotionModel,
    grouped: dict[str, list[dict]],
    train_streams: list[ConversationStream],
    val_streams: list[ConversationStream],
    record: dict[str, Any],
    started: float,
) -> int:
    """Train ``model`` through the memory loop and save the best checkpoint at ``--out``."""
    labels = model.vocab.labels
    train_convs = [
        training_conversation(s.conversation_id, grouped[s.conversation_id], labels)
        for s in train_streams
    ]
    val_convs = [
        training_conversation(s.conversation_id, grouped[s.conversation_id], labels)
        for s in val_streams
    ]
    trainer = MemoryLoopTrainer(
        model, settings["memory"], settings["memory_loop"], plain=settings["train"]
    )
    record["memory_loop"] = {"evals": []}
    best: dict[str, Any] = {"ua": -1.0}

    def on_epoch(epoch: float) -> None:
        metrics: dict[str, Any] = dict(trainer.validate(val_convs))
        metrics.update(epoch=epoch, minutes=round((time.monotonic() - started) / 60, 2))
        record["memory_loop"]["evals"].append(metrics)
        log.info(
            "memory loop epoch %g: window UA %.3f | dpm UA %.3f (%+.3f)",
            epoch, metrics["window"]["ua"], metrics["dpm"]["ua"],
            metrics["dpm"]["ua"] - metrics["window"]["ua"],
        )  # fmt: skip
        if metrics["dpm"]["ua"] > best["ua"]:
            best["ua"] = metrics["dpm"]["ua"]
            record["best"] = metrics
            best["model"] = trainer.trained_model()
            save(best["model"], None, args.out, record)

    on_epoch(0.0)  # the starting point, for comparison
    history = trainer.train(
        train_convs, train_streams, on_epoch=on_epoch, progress=not args.no_progress
    )
    trainer.close()
    record["loss_history"] = history
    record["training_minutes"] = round((time.monotonic() - started) / 60, 2)
    save(best["model"], None, args.out, record)  # the kept checkpoint, with the complete record
    print(json.dumps({"out": args.out, "best": record.get("best"),
                      "minutes": record["training_minutes"]}, indent=2))  # fmt: skip
    return 0
