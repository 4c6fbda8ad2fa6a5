import pytest

from dpm_worker import storage

pytestmark = pytest.mark.integration


def test_roundtrip_through_local_endpoint(s3_bucket):
    fs, path = storage.get_filesystem(f"s3://{s3_bucket}/x/hello.txt")
    with fs.open(path, "wb") as fh:
        fh.write(b"hello")
    fs.invalidate_cache()
    assert fs.cat(path) == b"hello"
    assert fs.ls(f"{s3_bucket}/x") == [f"{s3_bucket}/x/hello.txt"]
