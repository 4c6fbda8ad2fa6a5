"""Configuration of the labeling job: a frozen dataclass tree loaded from YAML + CLI overrides.

Precedence, lowest first: dataclass defaults, ``--config FILE.yaml``, the named flags
(``--mode``, ``--actors``, ...), then dotted overrides (``labeling.memory.lr=5e-4``).
Everything is validated here, before a cluster is touched.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from dpm_worker.errors import ConfigError
from dpm_worker.memory import LabelingConfig
from dpm_worker.tables import validate_run_id


@dataclass(frozen=True)
class LabelJobConfig:
    """The labeling job.

    Args:
        input: the manifest URI (Parquet, JSONL, CSV, or a folder with manifest.parquet).
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
        in_flight_per_actor: conversations queued on one actor at a time (back-pressure).
        max_restarts: how often Ray restarts a dead actor.
        max_attempts: how often a conversation is tried before the job gives up on it.
        progress_interval_s: seconds between progress lines.
        actor_start_timeout_s: how long actors may take to start and load the model.
        conversation_timeout_s: a conversation running longer gets its actor restarted.
        device: torch device for the actors (None: CUDA when the actor has a GPU, else CPU).
        dtype: the backbone's dtype in the actors: float32, bfloat16 or float16 (None: bf16 on
            CUDA, else float32).
        labeling: the labeling mode and DPM hyperparameters.
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
    max_restarts: int = 3
    max_attempts: int = 3
    progress_interval_s: float = 30.0
    actor_start_timeout_s: float = 600.0
    conversation_timeout_s: float = 3600.0
    device: str | None = None
    dtype: str | None = None
    labeling: LabelingConfig = field(default_factory=LabelingConfig)

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
        if self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("progress_interval_s", "actor_start_timeout_s", "conversation_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")

    @property
    def threads(self) -> int:
        """torch threads per actor."""
        return self.torch_threads or max(1, math.ceil(self.cpus_per_actor))


def build_dataclass(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """Build a (nested) frozen dataclass from a mapping, rejecting unknown keys.

    Nested dataclass fields are built from nested mappings; lists become tuples where the
    field is a tuple. Values are validated by the dataclasses' own ``__post_init__``.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"invalid {where or cls.__name__}: {exc}") from exc


def _coerce(hint: Any, value: Any, where: str) -> Any:
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{where} must not be null")
    for option in options:
        if (
            isinstance(option, type)
            and dataclasses.is_dataclass(option)
            and isinstance(value, Mapping)
        ):
            return build_dataclass(option, value, where + ".")
        if typing.get_origin(option) is tuple and isinstance(value, list | tuple):
            return tuple(value)
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option in (int, str, bool) and type(value) is option:
            return value
    if any(
        isinstance(o, type) and dataclasses.is_dataclass(o) and isinstance(value, o)
        for o in options
    ):
        return value
    raise ConfigError(f"{where} has the wrong type: {value!r} is not {hint}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree['a']['b']['c'] = value`` for ``dotted='a.b.c'`` (creating levels)."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"bad override key {dotted!r}")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value parsed as YAML (``1e-3``, ``[0.9, 0.99]``, ``null``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override must look like section.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    # YAML 1.1 reads "1e-3" as a string; numbers written that way are meant as floats.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    return key.strip(), value


def load_config(
    path: str | None, flags: Mapping[str, Any], overrides: Sequence[str]
) -> LabelJobConfig:
    """Merge the YAML file, the named flags (None = not given) and dotted overrides."""
    tree: dict[str, Any] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping, got {type(loaded).__name__}"
            )
        tree = loaded
    for dotted, value in flags.items():
        if value is not None:
            set_dotted(tree, dotted, value)
    for text in overrides:
        set_dotted(tree, *parse_override(text))
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
