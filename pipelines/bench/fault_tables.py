"""The tables of ``dpm bench faults``: the faulted run's emotion rows against the clean run's."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from dpm_worker.storage import join_uri, list_names
from dpm_worker.tables import EMOTIONS, ERRORS, read_run_table

TOLERANCE = 1e-6  # probabilities, CPU fp32


def compare_tables(clean_out: str, faults_out: str) -> dict[str, Any]:
    """Duplicated, lost and extra rows of the faulted table, and whether it equals the clean.

    A row is identified by ``(conversation_id, utterance_index)``. Equal means the same keys,
    each once, the same emotion and every probability within :data:`TOLERANCE`.
    """
    clean = _rows(read_run_table(clean_out, EMOTIONS))
    faults = _rows(read_run_table(faults_out, EMOTIONS))
    clean_keys = Counter(clean["keys"])
    fault_keys = Counter(faults["keys"])
    duplicated = sum(n - 1 for n in fault_keys.values())
    lost = len(set(clean_keys) - set(fault_keys))
    extra = len(set(fault_keys) - set(clean_keys))
    per_conversation = Counter(c for c, _ in clean_keys)
    shared = sorted(set(clean_keys) & set(fault_keys))
    differ, max_diff = 0, 0.0
    if shared and clean["probs"] is not None and faults["probs"] is not None:
        a = _by_key(clean, shared)
        b = _by_key(faults, shared)
        if a[1].shape == b[1].shape:
            max_diff = float(np.max(np.abs(a[1] - b[1])))
            differ = int(np.sum(a[0] != b[0]))
        else:
            max_diff = float("inf")
    return {
        "utterances_total": len(clean_keys),
        "conversations": len(per_conversation),
        "utterances_per_conversation": [
            min(per_conversation.values(), default=0),
            max(per_conversation.values(), default=0),
        ],
        "rows_clean": len(clean["keys"]),
        "rows_faults": len(faults["keys"]),
        "rows_duplicated": duplicated,
        "rows_lost": lost,
        "rows_extra": extra,
        "labels_differ": differ,
        "max_abs_prob_diff": max_diff,
        "error_rows_clean": read_run_table(clean_out, ERRORS).num_rows,
        "error_rows_faults": read_run_table(faults_out, ERRORS).num_rows,
        "tables_equal_clean": bool(
            clean_keys
            and duplicated == 0
            and lost == 0
            and extra == 0
            and differ == 0
            and max_diff <= TOLERANCE
        ),
    }


def run_state(output: str, run_id: str) -> dict[str, Any]:
    """Whether the run committed (``_SUCCESS``) and how many checkpoint folders it left."""
    root = os.path.join(output, "_runs", run_id)
    checkpoints = join_uri(root, "checkpoints")
    return {
        "committed": os.path.exists(os.path.join(root, "_SUCCESS")),
        "checkpoint_folders_left": len(list_names(checkpoints))
        if os.path.isdir(checkpoints)
        else 0,
    }


def _rows(table: Any) -> dict[str, Any]:
    if table.num_rows == 0:
        return {"keys": [], "emotions": None, "probs": None}
    names = sorted(n for n in table.column_names if n.startswith("p_"))
    keys = list(
        zip(
            table.column("conversation_id").to_pylist(),
            table.column("utterance_index").to_pylist(),
            strict=True,
        )
    )
    probs = np.stack([table.column(n).to_numpy().astype(np.float64) for n in names], axis=1)
    emotions = np.array([str(e) for e in table.column("emotion").to_pylist()])
    return {"keys": keys, "emotions": emotions, "probs": probs}


def _by_key(rows: dict[str, Any], keys: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Emotions and probabilities in the order of ``keys`` (the first row of a duplicate)."""
    first: dict[tuple[str, int], int] = {}
    for i, key in enumerate(rows["keys"]):
        first.setdefault(key, i)
    order = np.array([first[k] for k in keys])
    return rows["emotions"][order], rows["probs"][order]
