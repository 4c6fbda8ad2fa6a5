"""Run the local S3 endpoint in the foreground: ``python infra/s3_local.py [--port 9000] [--bucket B]``.

Serves 127.0.0.1 only. Point clients at it with the printed ``AWS_*`` variables; the data lives
in memory and is gone when the process stops. ``infra/s3_local.sh`` wraps this for start/stop.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from pipelines.local_s3 import LocalS3, dummy_credentials_env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--bucket", action="append", default=[], help="bucket(s) to create")
    args = parser.parse_args()
    server = LocalS3(args.port).start()
    for bucket in args.bucket:
        server.create_bucket(bucket)
    for key, value in dummy_credentials_env(server.endpoint_url).items():
        print(f"export {key}={value}")
    sys.stdout.flush()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
