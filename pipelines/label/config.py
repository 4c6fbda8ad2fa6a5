"""Configuration of the labeling job: a frozen dataclass tree loaded by ``pipelines.config``.

Precedence, lowest first: dataclass defaults, ``--config FILE.yaml``, the named flags
(``--mode``, ``--actors``, ...), then dotted overrides (``labeling.memory.lr=5e-4``).
Everything is validated here, before a cluster is touched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpm_worker.audio import SegmentsConfig
from dpm_worker.errors import ConfigError
from dpm_worker.memory import LabelingConfig
from dpm_worker.tables import RunChecks, validate_run_id
from pipelines.config import build_dataclass, merge_tree


@dataclass(frozen=True)
class LabelJobConfig:
    """The labeling job.

    Args:
        input: the manifest URI (Parquet, JSONL, CSV, or a folder with manifest.parquet), or
            a folder or bucket prefix of recordings without one (one conversation per file;
            ``dpm_worker.corpus.recordings``).
        output: the tables' output prefix (local folder or ``s3://bucket/prefix``).
        model: the model folder (None: the packaged default model).
        verify_weights: actors re-hash every model file in full at start (default: a cheap
            check of sizes, edge hashes and the stored fingerprint).
        run_id: the run's id; re-using one resumes that run (None: a fresh id).
        incremental: label only conversations that are new or changed since the committed runs
            with the same model and labeling config (see ``dpm_worker.tables.fingerprints``).
        address: a Ray cluster to join (None: start an embedded local Ray).
        actors: number of labeling actors (None: one per GPU, else one per ``cpus_per_actor``).
        gpus_per_actor: GPUs per actor when the cluster has GPUs.
        cpus_per_actor: CPUs reserved per actor (fractions allowed, e.g. 0.5 on a laptop).
        torch_threads: torch intra-op threads per actor (None: ``cpus_per_actor`` rounded up).
        in_flight_per_actor: conversations queued on one actor at a time (back-pressure):
            with ``slots_per_actor`` P, the P it labels plus ``in_flight_per_actor - 1``
            waiting with their audio already read.
        slots_per_actor: conversations one actor labels at once, every utterance step batched
            across them (continuous batching: a finished conversation's slot goes to the next
            at once). Rows equal those of 1 within 1e-5 (fp32); more slots use a GPU's
            arithmetic that one conversation at batch size 1 leaves idle. Default 8, chosen
            by ``dpm bench throughput --slots 1,2,4,8,16`` (docs/dpm.md): 3.8-4.5x the
            utterances per second of one conversation at a time on the default model, where
            16 adds ~16% for 1.7x the time per step (each conversation's own pace).
        max_restarts: how often Ray restarts a dead actor.
        max_attempts: how often a conversation is tried before the job gives up on it.
        progress_interval_s: seconds between progress lines.
        actor_start_timeout_s: how long actors may take to start and load the model.
        conversation_timeout_s: a conversation running longer gets its actor restarted.
        device: torch device for the actors (None: CUDA when the actor has a GPU, else CPU).
        max_segment_s: the longest segment cut from a recording by VAD or its RTTM (None:
            what the model reads whole, 15.2 s for the default model; larger is capped).
        segments: how recordings without a segmentation are cut: ``segments.max_s``, the
            longest turn cut at pauses from a VAD region of a mono recording without RTTM
            (default 4.0 s; null: only ``max_segment_s``).
        checkpoint_every_utterances: a conversation checkpoint (memory, history, rows) after
            every this many utterances, so a conversation whose actor died or was preempted
            resumes there (0: only on SIGTERM). Default 25, measured with the default model on
            CPU: one checkpoint ~0.64 MB and 70-110 ms against ~300 ms per utterance (about 1%
            of labeling time); a death costs at most 24 utterances of each conversation the
            actor held (docs/dpm.md).
        dtype: the backbone's dtype in the actors: float32, bfloat16 or float16 (None: bf16 on
            CUDA, else float32).
        metrics: export Prometheus metrics through Ray's metrics agent (driver and actors;
            ``pipelines.label.metrics``); false: none are recorded.
        labeling: the labeling mode and DPM hyperparameters.
        checks: when a run warns that it is out of its depth (one label takes most utterances,
            or the confidence is low; ``dpm_worker.tables.RunChecks``, docs/operations.md
            "When a run warns").
    """

    input: str
    output: str
    model: str | None = None
    verify_weights: bool = False
    run_id: str | None = None
    incremental: bool = False
    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 1.0
    torch_threads: int | None = None
    in_flight_per_actor: int = 2
    slots_per_actor: int = 8
    max_restarts: int = 3
    max_attempts: int = 3
    progress_interval_s: float = 30.0
    actor_start_timeout_s: float = 600.0
    conversation_timeout_s: float = 3600.0
    device: str | None = None
    max_segment_s: float | None = None
    checkpoint_every_utterances: int = 25
    dtype: str | None = None
    metrics: bool = True
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    labeling: LabelingConfig = field(default_factory=LabelingConfig)
    checks: RunChecks = field(default_factory=RunChecks)

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name} must be a non-empty URI, got {value!r}")
        if self.run_id is not None:
            validate_run_id(self.run_id)
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"actors must be >= 1, got {self.actors}")
        if not (0 < self.gpus_per_actor <= 64):
            raise ConfigError(f"gpus_per_actor must be in (0, 64], got {self.gpus_per_actor}")
        if not (0 < self.cpus_per_actor <= 1024):
            raise ConfigError(f"cpus_per_actor must be in (0, 1024], got {self.cpus_per_actor}")
        if self.dtype is not None and self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if self.in_flight_per_actor < 1:
            raise ConfigError(f"in_flight_per_actor must be >= 1, got {self.in_flight_per_actor}")
        if not 1 <= self.slots_per_actor <= 1024:
            raise ConfigError(f"slots_per_actor must be in [1, 1024], got {self.slots_per_actor}")
        if self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.checkpoint_every_utterances < 0:
            raise ConfigError(
                f"checkpoint_every_utterances must be >= 0, got {self.checkpoint_every_utterances}"
            )
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_segment_s is not None and not (
            math.isfinite(self.max_segment_s) and self.max_segment_s >= 1.0
        ):
            raise ConfigError(f"max_segment_s must be >= 1 s, got {self.max_segment_s!r}")
        for name in ("progress_interval_s", "actor_start_timeout_s", "conversation_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")

    @property
    def threads(self) -> int:
        """torch threads per actor."""
        return self.torch_threads or max(1, math.ceil(self.cpus_per_actor))

    @property
    def calls_per_actor(self) -> int:
        """Conversations handed to one actor at a time (its slots plus those waiting)."""
        return self.slots_per_actor + self.in_flight_per_actor - 1


def load_config(
    path: str | None, flags: Mapping[str, Any], overrides: Sequence[str]
) -> LabelJobConfig:
    """Merge the YAML file, the named flags (None = not given) and dotted overrides."""
    tree = merge_tree(path, flags, overrides)
    for required in ("input", "output"):
        if not tree.get(required):
            raise ConfigError(f"--{required} is required (or '{required}:' in the config file)")
    return build_dataclass(LabelJobConfig, tree)


def public_config(config: LabelJobConfig) -> dict[str, Any]:
    """The config as plain JSON data for run records and footers (URI credentials stripped)."""
    data = dataclasses.asdict(config)
    for key in ("input", "output", "model", "address"):
        if isinstance(data.get(key), str):
            data[key] = strip_userinfo(data[key])
    return data


def strip_userinfo(uri: str) -> str:
    """Drop ``user:password@`` from a URI (credentials never land in metadata or logs)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    host, slash, path = rest.partition("/")
    if "@" in host:
        host = "***@" + host.rsplit("@", 1)[1]
    return f"{scheme}://{host}{slash}{path}"
