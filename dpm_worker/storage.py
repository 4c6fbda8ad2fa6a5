"""Filesystem resolution for local paths and ``s3://`` URIs (fsspec / s3fs).

The library never talks to boto3; S3 goes through s3fs. The endpoint comes from, in order:
an explicit ``endpoint_url`` argument, the ``DPM_S3_ENDPOINT_URL`` environment variable, or the
standard ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` variables (honoured by botocore).
Credentials come from the standard AWS chain and are never logged.
"""

from __future__ import annotations

import json
import os
import posixpath
from functools import lru_cache
from pathlib import Path
from typing import Any

import fsspec

from dpm_worker.errors import StorageError


def cache_root() -> Path:
    """The local cache of copied models, speech weights and speech codes.

    Returns:
        ``$DPM_CACHE_DIR`` when set, else ``~/.cache/dpm`` (callers add their subfolder).
    """
    return Path(os.environ.get("DPM_CACHE_DIR") or Path.home() / ".cache" / "dpm")


def is_remote(uri: str) -> bool:
    """True for URIs with a scheme other than ``file``."""
    return "://" in uri and not uri.startswith("file://")


def s3_endpoint(endpoint_url: str | None = None) -> str | None:
    """The S3 endpoint to use, or None for AWS itself."""
    return (
        endpoint_url
        or os.environ.get("DPM_S3_ENDPOINT_URL")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )


@lru_cache(maxsize=16)
def _filesystem(protocol: str, endpoint_url: str | None) -> fsspec.AbstractFileSystem:
    if protocol == "s3":
        kwargs: dict = {}
        if endpoint_url:
            kwargs["endpoint_url"] = endpoint_url
        # The region comes from the standard AWS_DEFAULT_REGION / AWS_REGION chain; passing it
        # explicitly would make s3fs send a LocationConstraint that us-east-1 rejects.
        return fsspec.filesystem("s3", **kwargs)
    return fsspec.filesystem(protocol)


def get_filesystem(
    uri: str, endpoint_url: str | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or URI.

    Args:
        uri: a local path, ``file://`` URI or ``s3://bucket/key`` URI.
        endpoint_url: an explicit S3 endpoint (overrides the environment).
    """
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if not is_remote(uri):
        return _filesystem("file", None), os.path.abspath(uri)
    protocol, _, rest = uri.partition("://")
    if protocol in ("s3", "s3a"):
        return _filesystem("s3", s3_endpoint(endpoint_url)), rest
    try:
        return _filesystem(protocol, None), rest
    except (ImportError, ValueError) as exc:
        raise StorageError(f"unsupported storage scheme {protocol!r} in {uri}: {exc}") from exc


def list_names(uri: str, endpoint_url: str | None = None) -> list[str]:
    """Base names of the entries of a folder (local or S3), fresh from the store; [] if absent.

    Raises:
        StorageError: the folder exists but cannot be listed (the message is redacted).
    """
    fs, path = get_filesystem(uri, endpoint_url)
    try:
        fs.invalidate_cache()  # listings are cached by s3fs; other writers may have added files
        names = fs.ls(path, detail=False) if fs.exists(path) else []
    except FileNotFoundError:
        names = []
    except OSError as exc:
        raise StorageError(f"cannot list {redact(uri)}: {redact(str(exc))}") from exc
    return [name.rstrip("/").rsplit("/", 1)[-1] for name in names]


def read_json(uri: str, endpoint_url: str | None = None) -> dict[str, Any] | None:
    """The JSON document at ``uri`` (local or S3), or None when it does not exist.

    Raises:
        StorageError: it exists but cannot be read or parsed (the message is redacted).
    """
    fs, path = get_filesystem(uri, endpoint_url)
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read {redact(uri)}: {redact(str(exc))}") from exc


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with forward slashes."""
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def resolve_relative(uri: str, base_dir: str) -> str:
    """Resolve ``uri`` against ``base_dir`` unless it is absolute or has a scheme."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    return join_uri(base_dir, uri)


def parent_uri(uri: str) -> str:
    """The folder that holds ``uri`` (works for local paths and URIs)."""
    if is_remote(uri):
        scheme, _, rest = uri.partition("://")
        return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(os.path.abspath(uri))


def redact(text: str) -> str:
    """Remove anything that looks like an AWS secret from a message before logging it."""
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text
