"""A local S3 endpoint on 127.0.0.1 (moto's server) for development and tests.

Used by ``infra/s3_local.sh`` and the pytest fixture; the product itself never needs it.
moto is a development dependency and is imported lazily.
"""

from __future__ import annotations

import os
import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def dummy_credentials_env(endpoint_url: str) -> dict[str, str]:
    """Environment for clients of the local endpoint: dummy keys, us-east-1, the endpoint."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint_url,
    }


class LocalS3:
    """moto's threaded S3 server bound to loopback.

    Args:
        port: the port to bind; a free one when 0.
    """

    def __init__(self, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalS3:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def create_bucket(self, name: str) -> None:
        """Create a bucket through s3fs (the same client the product uses)."""
        import s3fs

        fs = s3fs.S3FileSystem(
            key="testing",
            secret="testing",
            endpoint_url=self.endpoint_url,
            skip_instance_cache=True,
        )
        # us-east-1 takes no LocationConstraint; passing one is an error (InvalidLocationConstraint).
        fs.mkdir(name, create_parents=True)

    def export_env(self) -> None:
        os.environ.update(dummy_credentials_env(self.endpoint_url))
