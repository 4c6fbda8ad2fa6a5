"""ray_cluster.yaml is a valid Ray cluster launcher config with the shape the job relies on.

Validated against the launcher's own JSON schema (ray/autoscaler/ray-schema.json, shipped in the
ray package) with jsonschema, the same check `ray up` runs before it contacts any cloud, and
then through the launcher's own prepare/validate step. No Ray cluster, no cloud, no network.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CONFIG_PATH = REPO / "ray_cluster.yaml"


def _ray_schema() -> dict[str, Any]:
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return _ray_schema()


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG_PATH.read_text())


def _schema_errors(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)
    ]


def _node_types(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    return head, workers


def test_config_matches_the_launcher_schema(config, schema):
    assert _schema_errors(config, schema) == []


def test_schema_check_rejects_a_broken_config(config, schema):
    # The check above must be able to fail: a typo'd top-level key, a fractional GPU count and
    # a missing provider are all things the launcher refuses.
    broken = copy.deepcopy(config)
    broken["idle_timeout_minuts"] = 5
    broken["available_node_types"]["worker.gpu"]["resources"]["GPU"] = 0.5
    del broken["provider"]
    errors = "\n".join(_schema_errors(broken, schema))
    assert "idle_timeout_minuts" in errors
    assert "0.5" in errors
    assert "provider" in errors


def test_head_is_cpu_only_and_gpu_group_autoscales(config):
    head, workers = _node_types(config)
    assert head["resources"].get("GPU", 0) == 0, "GPU actors must never land on the head"
    assert head.get("max_workers", 0) == 0
    gpu_groups = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert len(gpu_groups) == 1, f"expected one GPU worker group, got {sorted(gpu_groups)}"
    (group,) = gpu_groups.values()
    assert 0 <= group["min_workers"] <= group["max_workers"] <= config["max_workers"]
    assert group["max_workers"] >= 1
    assert config["idle_timeout_minutes"] > 0


def test_setup_installs_cuda_torch_on_gpu_workers_and_cpu_torch_on_head(config):
    _, workers = _node_types(config)
    gpu_setup = workers["worker.gpu"]["worker_setup_commands"]
    torch_line = next(i for i, c in enumerate(gpu_setup) if "torch==" in c)
    package_line = next(i for i, c in enumerate(gpu_setup) if "pip install -q -e ~/dpm" in c)
    assert "whl/cu" in gpu_setup[torch_line]
    # CUDA torch first, or pip resolves the CPU wheel while installing the package.
    assert torch_line < package_line
    head_setup = config["setup_commands"] + config["head_setup_commands"]
    assert any("torch==" in c and "whl/cpu" in c for c in head_setup)
    assert any("pip install -q -e ~/dpm" in c for c in head_setup)


def test_file_mounts_sync_the_repository(config):
    local_sources = {
        remote: os.path.expanduser(local) for remote, local in config["file_mounts"].items()
    }
    assert local_sources["~/dpm"] == "."
    assert (CONFIG_PATH.parent / local_sources["~/dpm"] / "pyproject.toml").is_file()
    assert "~/.ray/auth_token" in config["file_mounts"], "nodes need the cluster's auth token"


def test_every_node_starts_ray_with_token_auth(config):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts, key
        assert all("RAY_AUTH_MODE=token" in c for c in starts), key


def test_ray_launcher_prepares_and_validates_the_config(config):
    # What `ray up` does before it contacts the cloud: merge the provider's defaults, fold the
    # setup commands together, fill per-group worker bounds, validate. No cluster, no network.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    gpu = prepared["available_node_types"]["worker.gpu"]
    assert (gpu["min_workers"], gpu["max_workers"]) == (0, 8)
    # The GPU group's own commands replace the global (CPU torch) ones on GPU nodes.
    assert any("whl/cu" in c for c in gpu["worker_setup_commands"])
    assert not any("whl/cpu" in c for c in gpu["worker_setup_commands"])
