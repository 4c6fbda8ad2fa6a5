"""A folder (or bucket prefix) of recordings as a manifest: one conversation per file.

For users who have recordings and nothing else. Every file under the root, recursively and in
sorted path order, becomes one manifest row without times, so the worker segments it
(``dpm_worker.audio.segments``): a stereo recording is one speaker per channel, a mono one is
one ``unknown`` speaker cut into turns at pauses, and a sidecar ``NAME.rttm`` beside
``NAME.wav`` is its diarization (its turns and speakers are used instead of VAD).

Files are not opened here: a file that is not audio after all, or cannot be decoded, becomes
an error row of its own conversation when it is labeled, never a failed listing. Hidden files
and folders (a name starting with ``.``) are left out; sidecars are not conversations.
"""

from __future__ import annotations

import posixpath
from typing import Any

import pyarrow as pa

from dpm_worker.corpus.schema import MANIFEST_SCHEMA, UNKNOWN_SPEAKER
from dpm_worker.errors import ManifestError

# What libsndfile decodes (mp3 since 1.1); listed for the summary, not a filter: a file with
# another extension is still tried, and fails as an error row when it is not audio.
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif")
AUDIO_EXTENSIONS += (".aiff", ".au", ".caf", ".w64", ".rf64", ".sph", ".nist", ".voc")
SIDECAR_EXTENSION = ".rttm"


def recordings_manifest(fs: Any, root: str) -> pa.Table:
    """The manifest of every recording under ``root`` on ``fs``.

    Args:
        fs: an fsspec filesystem (local, S3, ...).
        root: a folder (or bucket prefix) path on ``fs``, without its protocol.

    Returns:
        A table of ``MANIFEST_SCHEMA``: per file ``conversation_id`` (its path relative to
        ``root``), ``utterance_index`` 0, ``speaker`` ``unknown``, ``audio_uri`` (absolute,
        with the filesystem's protocol for remote stores), no times, and ``rttm_uri`` when a
        sidecar ``NAME.rttm`` exists.

    Raises:
        ManifestError: ``root`` is not a folder, cannot be listed, or holds no files.
    """
    root = root.rstrip("/")
    uri = _uri(fs, root)
    try:
        if not fs.isdir(root):
            raise ManifestError("not a folder of recordings (and no manifest given)", uri)
        fs.invalidate_cache()  # s3fs caches listings; the bucket may have changed
        paths = sorted(fs.find(root, withdirs=False))
    except ManifestError:
        raise
    except Exception as exc:  # noqa: BLE001 - any storage failure: the listing is unusable
        raise ManifestError(f"cannot list the folder: {exc}", uri) from exc
    relative = {path: posixpath.relpath(path, root) for path in paths}
    files = [p for p, rel in relative.items() if not any(x.startswith(".") for x in rel.split("/"))]
    stems = {posixpath.splitext(p)[0] for p in files if not _is_sidecar(p)}
    sidecars = {posixpath.splitext(p)[0]: p for p in files if _is_sidecar(p)}
    rows = []
    for path in files:
        if _is_sidecar(path) and posixpath.splitext(path)[0] in stems:
            continue  # a diarization, used by its recording's row
        sidecar = sidecars.get(posixpath.splitext(path)[0])
        rows.append(
            {
                "conversation_id": relative[path],
                "utterance_index": 0,
                "speaker": UNKNOWN_SPEAKER,
                "audio_uri": _uri(fs, path),
                "rttm_uri": _uri(fs, sidecar) if sidecar and sidecar != path else None,
            }
        )
    if not rows:
        raise ManifestError("the folder holds no files to label", uri)
    columns = {field.name: [row.get(field.name) for row in rows] for field in MANIFEST_SCHEMA}
    return pa.table(columns, schema=MANIFEST_SCHEMA)


def is_audio_name(path: str) -> bool:
    """Whether a file name has one of :data:`AUDIO_EXTENSIONS` (case-insensitive)."""
    return posixpath.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def _is_sidecar(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() == SIDECAR_EXTENSION


def _uri(fs: Any, path: str) -> str:
    """A path on ``fs`` as the URI the rest of the library opens (plain for local files)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return path
    return fs.unstrip_protocol(path)
