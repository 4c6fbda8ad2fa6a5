"""The rows of the output tables (DESIGN section 7): schemas, run identity, row builders.

The emotion table has one ``p_<label>`` column per label of the model, so its schema is built
from the label set (:func:`emotion_schema`); the errors table's is fixed (``ERRORS_SCHEMA``).
:class:`RunInfo` is what every file of a run shares and writes into its Parquet footer
(``dpm.*`` keys, read back by :func:`decode_metadata`). :func:`build_emotion_table` and
:func:`build_error_table` assemble one conversation's rows in memory; ``dpm_worker.tables.writer``
lays them out under the output URI and commits them.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from dpm_worker.errors import ConfigError
from dpm_worker.storage import redact
from dpm_worker.utterance import LabeledUtterance

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
META_PREFIX = "dpm."

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("conversation_id", pa.string(), nullable=False),
        pa.field("utterance_index", pa.int32()),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("input_uri", pa.string()),
    ]
)


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is safe as a file-name prefix, else raise ConfigError."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or ".." in run_id:
        raise ConfigError(
            f"run id must be 1-128 characters of [A-Za-z0-9._-], starting with a letter or "
            f"digit, without '..'; got {run_id!r}"
        )
    return run_id


def new_run_id(now: dt.datetime | None = None) -> str:
    """A fresh run id: UTC time plus a random suffix, e.g. ``20261126T125300Z-3fa2c1``."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def probability_column(label: str) -> str:
    """The column name holding the probability of ``label`` (``p_<label>``)."""
    safe = re.sub(r"[^0-9a-z_]", "_", label.lower())
    return f"p_{safe}"


def emotion_schema(labels: Sequence[str]) -> pa.Schema:
    """The emotion table's schema for a label set (one ``p_<label>`` column per label)."""
    prob_columns = [probability_column(label) for label in labels]
    if len(set(prob_columns)) != len(prob_columns):
        raise ConfigError(f"labels {list(labels)!r} map to duplicate columns {prob_columns!r}")
    return pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("conversation_id", pa.string(), nullable=False),
            pa.field("utterance_index", pa.int32(), nullable=False),
            pa.field("speaker", pa.string(), nullable=False),
            pa.field("start_s", pa.float64()),
            pa.field("end_s", pa.float64()),
            pa.field("emotion", pa.dictionary(pa.int32(), pa.string()), nullable=False),
            pa.field("confidence", pa.float32(), nullable=False),
            *[pa.field(name, pa.float32(), nullable=False) for name in prob_columns],
            pa.field("gold_emotion", pa.string()),
            # An utterance longer than the model's context: read in this many chunks, or
            # truncated to its last part (LabelingConfig.long_utterances); 1 / false otherwise.
            pa.field("chunks", pa.int16(), nullable=False),
            pa.field("truncated", pa.bool_(), nullable=False),
            pa.field("mode", pa.string(), nullable=False),
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("labeled_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
    )


@dataclass(frozen=True)
class RunInfo:
    """What every file of a run shares: identity, label set and footer metadata.

    Args:
        run_id: the run's id (validated as a safe file-name prefix).
        run_date: ``YYYY-MM-DD``, the Hive partition; fixed when the run starts so that a
            resumed run writes into the same partition.
        labels: the model's emotion label set, in the order of its emotion tokens.
        mode: the labeling mode (``dpm``, ``window``, ...).
        model_id: a readable model name.
        model_fingerprint: a hash of the model's weights and vocabulary.
        code_version: the package version (and git commit when known).
        config: the run's configuration (JSON-serializable; credentials must not be in it).
    """

    run_id: str
    run_date: str
    labels: tuple[str, ...]
    mode: str
    model_id: str
    model_fingerprint: str
    code_version: str
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_run_id(self.run_id)
        try:
            dt.date.fromisoformat(self.run_date)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"run_date must be YYYY-MM-DD, got {self.run_date!r}") from exc
        object.__setattr__(self, "labels", tuple(self.labels))
        emotion_schema(self.labels)  # validates the label set's column names
        try:
            json.dumps(self.config)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"run config must be JSON-serializable: {exc}") from exc

    def footer_metadata(self) -> dict[bytes, bytes]:
        """Parquet key-value metadata: run config, label set, model fingerprint, code version."""
        values = {
            "run_id": self.run_id,
            "run_date": self.run_date,
            "labels": json.dumps(list(self.labels)),
            "mode": self.mode,
            "model_id": self.model_id,
            "model_fingerprint": self.model_fingerprint,
            "code_version": self.code_version,
            "run_config": json.dumps(self.config, sort_keys=True),
        }
        # Stored as given (see RunTables.write_record): the config holds no credentials, since
        # URIs lose their userinfo before they get here.
        return {f"{META_PREFIX}{k}".encode(): v.encode() for k, v in values.items()}


@dataclass(frozen=True)
class ErrorRecord:
    """One row of the errors table before the run id is added."""

    conversation_id: str
    utterance_index: int | None
    error_type: str
    message: str
    input_uri: str | None = None


def build_emotion_table(
    run: RunInfo,
    conversation_id: str,
    utterances: Sequence[LabeledUtterance],
    labeled_at: dt.datetime,
) -> pa.Table:
    """Assemble one conversation's emotion rows as a table with the run's schema.

    Each row's identity (index, speaker, times, gold emotion) is its utterance's own, as the
    audio stage read it from the manifest; the probabilities go into Arrow as float32, once.
    """
    schema = emotion_schema(run.labels)
    for labeled in utterances:
        if np.shape(labeled.probs) != (len(run.labels),):
            raise ConfigError(
                f"utterance {labeled.utterance.utterance_index} of {conversation_id!r} has "
                f"probabilities of shape {np.shape(labeled.probs)} for {len(run.labels)} labels"
            )
    n = len(utterances)
    rows = [labeled.utterance for labeled in utterances]
    probs = np.zeros((n, len(run.labels)), dtype=np.float32)
    for i, labeled in enumerate(utterances):
        probs[i] = labeled.probs
    when = labeled_at.astimezone(dt.UTC)
    columns: dict[str, pa.Array] = {
        "run_id": pa.array([run.run_id] * n, pa.string()),
        "conversation_id": pa.array([conversation_id] * n, pa.string()),
        "utterance_index": pa.array([u.utterance_index for u in rows], pa.int32()),
        "speaker": pa.array([u.speaker for u in rows], pa.string()),
        "start_s": pa.array([u.start_s for u in rows], pa.float64()),
        "end_s": pa.array([u.end_s for u in rows], pa.float64()),
        # A fixed dictionary (the label set) keeps every file's dictionary identical.
        "emotion": pa.DictionaryArray.from_arrays(
            pa.array([run.labels.index(u.emotion) for u in utterances], pa.int32()),
            pa.array(run.labels, pa.string()),
        ),
        "confidence": pa.array([u.confidence for u in utterances], pa.float32()),
    }
    for j, label in enumerate(run.labels):
        columns[probability_column(label)] = pa.array(probs[:, j], pa.float32())
    columns["gold_emotion"] = pa.array([u.emotion for u in rows], pa.string())
    columns["chunks"] = pa.array([u.chunks for u in utterances], pa.int16())
    columns["truncated"] = pa.array([u.truncated for u in utterances], pa.bool_())
    columns["mode"] = pa.array([run.mode] * n, pa.string())
    columns["model_id"] = pa.array([run.model_id] * n, pa.string())
    columns["labeled_at"] = pa.array([when] * n, pa.timestamp("us", tz="UTC"))
    table = pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)
    return table.replace_schema_metadata(run.footer_metadata())


def build_error_table(run: RunInfo, errors: Sequence[ErrorRecord]) -> pa.Table:
    """Assemble error rows (messages redacted of credentials) with the errors schema."""
    table = pa.Table.from_pylist(
        [
            {
                "run_id": run.run_id,
                "conversation_id": e.conversation_id,
                "utterance_index": e.utterance_index,
                "error_type": e.error_type,
                "message": redact(e.message),
                "input_uri": e.input_uri,
            }
            for e in errors
        ],
        schema=ERRORS_SCHEMA,
    )
    return table.replace_schema_metadata(run.footer_metadata())


def decode_metadata(metadata: dict[bytes, bytes] | None) -> dict[str, Any]:
    """The ``dpm.*`` footer metadata of a Parquet file as a plain dict (JSON values decoded)."""
    out: dict[str, Any] = {}
    for key, value in (metadata or {}).items():
        name = key.decode()
        if not name.startswith(META_PREFIX):
            continue
        name = name[len(META_PREFIX) :]
        text = value.decode()
        out[name] = json.loads(text) if name in ("labels", "run_config") else text
    return out
