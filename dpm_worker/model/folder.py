"""Model folders as commit units: a file manifest written last, verified on every load.

A model folder is complete only when ``dpm_manifest.json`` (names, sizes, sha256 of every other
file) is present and matches. Saving writes into a temporary folder and then renames it
(local) or uploads the manifest after every other file (S3), so an interrupted save never
leaves a folder that looks complete. Remote folders are copied into a local cache keyed by
the URI and re-verified, never trusted because they happen to exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from dpm_worker.errors import ModelError, StorageError
from dpm_worker.storage import cache_root, get_filesystem, is_remote, join_uri, redact

MANIFEST_NAME = "dpm_manifest.json"
WEIGHT_SUFFIX = ".safetensors"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_file_manifest(folder: Path) -> dict:
    """Hash every file of ``folder`` (except the manifest) into ``dpm_manifest.json``."""
    files = {
        path.name: {"size": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST_NAME
    }
    manifest = {"files": files, "fingerprint": fingerprint_of(files)}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def fingerprint_of(files: dict) -> str:
    """sha256 over the weight files' names and hashes (what decides the model's outputs)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        if name.endswith(WEIGHT_SUFFIX):
            digest.update(f"{name}:{files[name]['sha256']}\n".encode())
    return digest.hexdigest()


def verify_folder(folder: Path, *, check_hashes: bool = True) -> dict:
    """Check that every file in the manifest exists with its size and hash; return the manifest.

    Raises:
        ModelError: no manifest, or a file missing, truncated or changed (names the file).
    """
    manifest_path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ModelError("model folder does not exist", str(folder))
    if not manifest_path.is_file():
        raise ModelError(
            f"model folder has no {MANIFEST_NAME} (incomplete or not a DPM model)", str(folder)
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelError(f"{MANIFEST_NAME} is unreadable: {exc}", str(manifest_path)) from exc
    for name, meta in files.items():
        path = folder / name
        if not path.is_file():
            raise ModelError(f"model file {name} is missing", str(folder))
        size = path.stat().st_size
        if size != meta["size"]:
            raise ModelError(
                f"model file {name} has {size} bytes, the manifest says {meta['size']}", str(path)
            )
        if check_hashes and sha256_file(path) != meta["sha256"]:
            raise ModelError(
                f"model file {name} does not match its sha256 in {MANIFEST_NAME}", str(path)
            )
    return manifest


def commit_folder(staged: Path, uri: str, *, endpoint_url: str | None = None) -> None:
    """Publish a fully written local folder at ``uri`` (local path or s3://), manifest last.

    The manifest is written into ``staged`` here. Locally the folder is renamed into place
    (an existing model there is replaced only after the new one is complete). On S3 a stale
    manifest is deleted first, then the files are uploaded, then the manifest.
    """
    write_file_manifest(staged)
    # mkdtemp and some writers create owner-only files; a published model is world-readable.
    staged.chmod(0o755)
    for path in staged.iterdir():
        path.chmod(0o644)
    if not is_remote(uri):
        target = Path(uri).expanduser().resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(target, old)
        shutil.move(str(staged), str(target))
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return
    fs, root = get_filesystem(uri, endpoint_url)
    try:
        if fs.exists(f"{root}/{MANIFEST_NAME}"):
            fs.rm(f"{root}/{MANIFEST_NAME}")
        for path in sorted(staged.iterdir()):
            if path.name != MANIFEST_NAME:
                fs.put_file(str(path), f"{root}/{path.name}")
        fs.put_file(str(staged / MANIFEST_NAME), f"{root}/{MANIFEST_NAME}")
    except OSError as exc:
        raise StorageError(f"cannot write model to {uri}: {redact(str(exc))}") from exc
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def staging_folder(uri: str) -> Path:
    """A fresh temporary folder to write a model into before :func:`commit_folder`.

    For a local target it is a sibling, so the final rename stays on one filesystem.
    """
    if is_remote(uri):
        return Path(tempfile.mkdtemp(prefix="dpm-model-"))
    target = Path(uri).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


def fetch_folder(uri: str, *, endpoint_url: str | None = None) -> Path:
    """Copy a remote model folder into the local cache (only changed files) and verify it.

    Raises:
        ModelError: the remote folder has no manifest or a file is missing or mismatched.
        StorageError: the remote location cannot be read.
    """
    fs, root = get_filesystem(uri, endpoint_url)
    local = cache_root() / "models" / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:24]
    local.mkdir(parents=True, exist_ok=True)
    try:
        manifest_bytes = fs.cat_file(f"{root}/{MANIFEST_NAME}")
    except FileNotFoundError:
        raise ModelError(
            f"remote model folder has no {MANIFEST_NAME} (incomplete or not a model)", uri
        ) from None
    except OSError as exc:
        raise StorageError(f"cannot read model at {uri}: {redact(str(exc))}") from exc
    manifest = json.loads(manifest_bytes)
    for name, meta in manifest.get("files", {}).items():
        path = local / name
        if (
            path.is_file()
            and path.stat().st_size == meta["size"]
            and sha256_file(path) == meta["sha256"]
        ):
            continue
        partial = local / f".{name}.part-{uuid.uuid4().hex[:8]}"
        try:
            fs.get_file(f"{root}/{name}", str(partial))
        except FileNotFoundError:
            raise ModelError(f"model file {name} is missing", join_uri(uri, name)) from None
        os.replace(partial, path)
    (local / MANIFEST_NAME).write_bytes(manifest_bytes)
    verify_folder(local)
    return local
