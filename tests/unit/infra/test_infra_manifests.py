"""The deployment files in infra/ say what the job needs: checked without any cluster or cloud.

KubeRay and Kubernetes are not here, so these tests read the manifests as data and hold them to
the contract: the entrypoint is a command line the label job accepts, GPU work lands on the GPU
group, credentials come from secrets only, and one run per night.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
INFRA = REPO / "infra"


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load((INFRA / "k8s" / "rayjob.yaml").read_text())


def _containers(rayjob: dict) -> list[dict]:
    spec = rayjob["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_rayjob_runs_the_label_job_and_shuts_its_cluster_down(rayjob):
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "pipelines.label_corpus"]
    # The entrypoint must be a command line the job's own parser accepts.
    from pipelines import label_corpus

    parser = argparse.ArgumentParser()
    label_corpus.add_arguments(parser)
    args, unknown = parser.parse_known_args(argv[3:])
    assert args.run_id == "nightly-NIGHTLY_DATE" and args.address == "auto"
    assert rayjob["metadata"]["name"] == "dpm-label-NIGHTLY_DATE"
    assert unknown == [], f"the label job does not accept {unknown}"
    assert args.incremental is True  # nightly runs label only new or changed conversations


def test_rayjob_gpu_group_and_cpu_head(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    (gpu,) = cluster["workerGroupSpecs"]
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    (worker,) = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert cluster["authOptions"]["mode"] == "token"
    assert len({c["image"] for c in _containers(rayjob)}) == 1, "one image for every node"


def test_credentials_come_from_secrets_never_inline(rayjob):
    secret_names = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY", re.IGNORECASE)
    for container in _containers(rayjob):
        assert any("secretRef" in source for source in container.get("envFrom", []))
        for var in container.get("env", []):
            if secret_names.search(var["name"]):
                assert "value" not in var, f"{var['name']} is inline in {container['name']}"
    for path in [INFRA / "k8s" / "rayjob.yaml", INFRA / "k8s" / "cronjob.yaml"]:
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
        assert not re.search(r"(?m)^\s*(aws_secret_access_key|auth_token)\s*:\s*\S", text), path


def test_cronjob_creates_one_rayjob_per_night():
    docs = [d for d in yaml.safe_load_all((INFRA / "k8s" / "cronjob.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding", "CronJob"}
    cron = kinds["CronJob"]["spec"]
    assert len(cron["schedule"].split()) == 5
    assert cron["concurrencyPolicy"] == "Forbid"
    script = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "s/NIGHTLY_DATE/$day/g" in script and "/template/rayjob.yaml" in script
    (rule,) = kinds["Role"]["rules"]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"]


def test_cron_line_calls_the_nightly_script():
    lines = [
        line
        for line in (INFRA / "cron" / "nightly.cron").read_text().splitlines()
        if line.strip() and not line.startswith("#") and "=" not in line.split()[0]
    ]
    assert len(lines) == 1
    fields = lines[0].split()
    assert all(re.fullmatch(r"[\d*/,-]+", f) for f in fields[:5]), fields[:5]
    assert "infra/nightly.sh" in lines[0]
    # An unescaped % ends the command in crontab and feeds the rest to stdin.
    assert not re.search(r"(?<!\\)%", lines[0])


def test_dockerfile_installs_cuda_torch_first_and_bakes_in_no_weights():
    text = (INFRA / "Dockerfile").read_text()
    torch_at = text.index("pip install torch==")
    assert "download.pytorch.org/whl/cu" in text
    assert torch_at < text.index("pip install .")
    assert "rm -rf dpm_worker/assets/default_model" in text
    assert not re.search(r"(?i)\.(safetensors|bin|pt)\b", text.split("FROM", 1)[1])


@pytest.mark.parametrize("script", ["ray_local.sh", "nightly.sh"])
def test_shell_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(INFRA / script)]).returncode == 0


def test_nightly_dry_run_names_the_night(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "DPM_INPUT": "s3://corpus/manifest.parquet",
        "DPM_OUTPUT": "s3://out/tables",
        "DPM_NIGHTLY_DATE": "2026-01-02",
        # Nothing listens here: the status check finds no job and the dry run prints the plan.
        "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:9",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        ["bash", str(INFRA / "nightly.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    plan = done.stdout
    assert "--submission-id dpm-label-2026-01-02" in plan
    assert "--run-id nightly-2026-01-02 --address auto" in plan
    assert "--incremental" in plan  # the nightly default


def test_ray_local_refuses_a_state_dir_too_long_for_unix_sockets(tmp_path):
    state = tmp_path / ("x" * 40)  # Ray would fail later with an obscure socket error
    done = subprocess.run(
        ["bash", str(INFRA / "ray_local.sh"), "start"],
        env={"PATH": "/usr/bin:/bin", "DPM_RAY_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "too long" in done.stderr
    assert not (state / "ray.pid").exists()
