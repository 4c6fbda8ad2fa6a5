"""Model folders as commit units: a file manifest written last, checked on every load.

A model folder is complete only when ``dpm_manifest.json`` (names, sizes, sha256 of every other
file, and the fingerprint over the weights' hashes) is present and matches. The hashes are
computed once, when the folder is saved. Loading checks cheaply: every file's size, a sha256 of
its first and last 64 KiB (catches a truncated, zero-filled or re-saved file), and that the
stored fingerprint is the one the stored hashes give. A full re-hash of every byte is an explicit
option (``full_hash=True``, ``--verify-weights`` on the CLI): for a 7B folder it is ~13 GB of
sha256 per actor start. Saving writes into a temporary folder and then renames it (local) or
uploads the manifest after every other file (S3), so an interrupted save never leaves a folder
that looks complete. Remote folders are copied once per node into a local cache keyed by the
URI, under a file lock (concurrent actors on a node download once), each downloaded file hashed
in full against the manifest; later loads reuse the copy while the remote manifest is unchanged.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from dpm_worker.errors import ModelError, StorageError
from dpm_worker.model.calibration import CALIBRATION_FILE
from dpm_worker.storage import cache_root, get_filesystem, is_remote, join_uri, redact

MANIFEST_NAME = "dpm_manifest.json"
WEIGHT_SUFFIX = ".safetensors"
# Bytes hashed at each end of a file by the cheap check (the whole file when smaller).
EDGE_BYTES = 64 * 1024

log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def edges_sha256(path: Path) -> str:
    """sha256 of a file's first and last ``EDGE_BYTES`` (cheap; the whole file when small)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size <= 2 * EDGE_BYTES:
            digest.update(handle.read())
        else:
            digest.update(handle.read(EDGE_BYTES))
            handle.seek(size - EDGE_BYTES)
            digest.update(handle.read(EDGE_BYTES))
    return digest.hexdigest()


def file_entry(path: Path) -> dict:
    """A manifest entry: size, full sha256 and the edges' sha256."""
    return {
        "size": path.stat().st_size,
        "sha256": sha256_file(path),
        "edges_sha256": edges_sha256(path),
    }


def write_file_manifest(folder: Path) -> dict:
    """Hash every file of ``folder`` (except the manifest) into ``dpm_manifest.json``.

    Args:
        folder: a complete local model folder.

    Returns:
        The manifest: ``{"files": {name: {size, sha256, edges_sha256}}, "fingerprint": ...}``.
    """
    files = {
        path.name: file_entry(path)
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST_NAME
    }
    manifest = {"files": files, "fingerprint": fingerprint_of(files)}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def fingerprint_of(files: dict) -> str:
    """sha256 over the weight files' names and hashes (what decides the model's outputs), and
    the calibration's when there is one: it changes the emitted probabilities, so resumed and
    incremental runs must not mix rows from before and after it. Folders without it keep the
    fingerprint they always had."""
    digest = hashlib.sha256()
    for name in sorted(files):
        if name.endswith(WEIGHT_SUFFIX) or name == CALIBRATION_FILE:
            digest.update(f"{name}:{files[name]['sha256']}\n".encode())
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    """The folder's manifest, checked for shape and self-consistency (no file is read).

    Raises:
        ModelError: no folder, no manifest, an unreadable one, or a stored fingerprint that is
            not the one the stored hashes give (a hand-edited or mixed-up manifest).
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
        stored = manifest["fingerprint"]
        computed = fingerprint_of(files)
        if not all(isinstance(meta["size"], int) for meta in files.values()):
            raise TypeError("a file size is not an integer")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{MANIFEST_NAME} is unreadable: {exc}", str(manifest_path)) from exc
    if stored != computed:
        raise ModelError(
            f"{MANIFEST_NAME} fingerprint {stored} is not the one its file hashes give "
            f"({computed})",
            str(manifest_path),
        )
    return manifest


def verify_folder(folder: Path, *, full_hash: bool = False) -> dict:
    """Check a local folder against its manifest; return the manifest.

    The default check reads the manifest and ``2 * EDGE_BYTES`` per file: sizes, the edges'
    sha256 (when the manifest has them) and the stored fingerprint's consistency.

    Args:
        folder: the local model folder.
        full_hash: also re-hash every byte of every file (slow for big weights).

    Raises:
        ModelError: no manifest, or a file missing, truncated or changed (names the file).
    """
    manifest = read_manifest(folder)
    for name, meta in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ModelError(f"model file {name} is missing", str(folder))
        size = path.stat().st_size
        if size != meta["size"]:
            raise ModelError(
                f"model file {name} has {size} bytes, the manifest says {meta['size']}", str(path)
            )
        if "edges_sha256" in meta and edges_sha256(path) != meta["edges_sha256"]:
            raise ModelError(
                f"model file {name} does not match its edges_sha256 in {MANIFEST_NAME}", str(path)
            )
        if full_hash and sha256_file(path) != meta["sha256"]:
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


def fetch_folder(
    uri: str, *, endpoint_url: str | None = None, full_hash: bool = False
) -> tuple[Path, list[str]]:
    """Copy a remote model folder into the local cache once per node, and verify it.

    The copy is guarded by an exclusive lock on ``<cache entry>.lock``: a second process on the
    node waits for the first and then finds the copy complete. The copy counts as complete
    when its manifest (written last, by atomic rename) equals the remote one; then nothing is
    downloaded. Every downloaded file is hashed in full against the manifest.

    Args:
        uri: the ``s3://`` (or other remote) folder.
        endpoint_url: an explicit S3 endpoint (else the environment's).
        full_hash: re-hash the cached files in full even when nothing was downloaded.

    Returns:
        ``(local folder, names of the files downloaded by this call)``.

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
    with open(local.with_name(local.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        cached = local / MANIFEST_NAME
        if cached.is_file() and cached.read_bytes() == manifest_bytes:
            return local, []
        # A stale or absent manifest: the copy is not complete until the new one lands.
        cached.unlink(missing_ok=True)
        downloaded = _download(fs, root, uri, json.loads(manifest_bytes), local)
        staged = local / f".{MANIFEST_NAME}.part-{uuid.uuid4().hex[:8]}"
        staged.write_bytes(manifest_bytes)
        os.replace(staged, cached)
    verify_folder(local, full_hash=full_hash)
    if downloaded:
        log.info("copied %d file(s) of %s into %s", len(downloaded), redact(uri), local)
    return local, downloaded


def _download(fs: Any, root: str, uri: str, manifest: dict, local: Path) -> list[str]:
    """Fetch the files whose local copy is absent or differs; returns their names."""
    downloaded = []
    for name, meta in manifest.get("files", {}).items():
        path = local / name
        if (
            path.is_file()
            and path.stat().st_size == meta["size"]
            and sha256_file(path) == meta["sha256"]
        ):
            continue  # left by an earlier copy of another version, or an interrupted one
        partial = local / f".{name}.part-{uuid.uuid4().hex[:8]}"
        try:
            fs.get_file(f"{root}/{name}", str(partial))
        except FileNotFoundError:
            raise ModelError(f"model file {name} is missing", join_uri(uri, name)) from None
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise StorageError(f"cannot read {name} of {uri}: {redact(str(exc))}") from exc
        if sha256_file(partial) != meta["sha256"]:
            partial.unlink(missing_ok=True)
            raise ModelError(
                f"model file {name} does not match its sha256 in {MANIFEST_NAME}",
                join_uri(uri, name),
            )
        os.replace(partial, path)
        downloaded.append(name)
    return downloaded
