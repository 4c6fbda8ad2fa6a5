"""Shared fixtures: the local S3 endpoint on 127.0.0.1 (moto's server), skips for GPU tests."""

from __future__ import annotations

import os
import uuid

import pytest


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one thread, and the machine is shared; restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def local_s3():
    """A moto S3 server on loopback for the whole session, with dummy credentials exported."""
    from pipelines.local_s3 import LocalS3, dummy_credentials_env

    server = LocalS3().start()
    saved = {k: os.environ.get(k) for k in dummy_credentials_env(server.endpoint_url)}
    server.export_env()
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(local_s3):
    """A fresh, empty bucket name on the local S3 endpoint."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    local_s3.create_bucket(name)
    return name


# infra/gpu_check.sh --dry-run sets this to run the gpu-marked tests on CPU with tiny shapes,
# so the script's steps are exercised on a machine without CUDA.
GPU_TESTS_ON_CPU_ENV = "DPM_GPU_TESTS_ON_CPU"


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available() or os.environ.get(GPU_TESTS_ON_CPU_ENV) == "1":
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
