"""Conversation checkpoints: a long conversation resumes where its actor stopped.

Layout under an output URI ``OUT``::

    OUT/_runs/<run_id>/checkpoints/<key>/<position:08d>-<writer>.safetensors

``<key>`` is the conversation's table key (``conversation_key``), ``position`` the number of
utterances labeled, ``writer`` a random id. One checkpoint is one object: a state as the
labeler hands it out, named tensors (``dpm_worker.memory.ConversationState.to_tensors``: the
memory's adapters and optimizer state, the RNG, the rows, the history tail) and a JSON header,
stored as safetensors with the header and what the checkpoint is valid for in its metadata.
This module knows no memory type: the caller turns the pair back into its state (``parse``).
No pickle: loading a checkpoint runs no code.

Why it is safe against late writers: every checkpoint has a name of its own and is written in
one atomic step (one PUT; locally a temporary file and a rename), so none is ever torn or
replaced; readers take the highest position, so a zombie actor's late, older checkpoint never
wins over a newer one; a writer deletes only checkpoints older than its own.

A checkpoint is valid for one model, one labeling config and one conversation input (the
:class:`CheckpointKey`); one made for anything else is ignored and the conversation restarts,
with a log line that says why.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from dpm_worker.errors import StorageError
from dpm_worker.storage import get_filesystem, join_uri, list_names, redact
from dpm_worker.tables.schema import validate_run_id
from dpm_worker.tables.writer import RUNS_DIR, conversation_key, write_bytes_atomic

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_FORMAT = "dpm-conversation-checkpoint/1"
_NAME = re.compile(r"^(\d{8})-([0-9a-f]{12})\.safetensors$")
Tensors = dict[str, torch.Tensor]
T = TypeVar("T")


@dataclass(frozen=True)
class CheckpointKey:
    """What a checkpoint is valid for.

    Args:
        model_fingerprint: the model's fingerprint (weights and vocabulary).
        labeling_hash: ``labeling_hash`` of the labeling config.
        inputs_digest: a hash of the conversation's input as labeled (its speakers and speech
            codes), so a changed recording under the same run id is never resumed.
    """

    model_fingerprint: str
    labeling_hash: str
    inputs_digest: str = ""


def checkpoint_name(position: int) -> str:
    """A fresh, unique object name for a checkpoint at ``position``."""
    return f"{position:08d}-{uuid.uuid4().hex[:12]}.safetensors"


def encode_checkpoint(tensors: Tensors, header: dict[str, Any], key: CheckpointKey) -> bytes:
    """The bytes of one checkpoint: safetensors, with ``header`` and ``key`` as JSON in its
    metadata."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    meta = {**header, "key": asdict(key)}
    return save_tensors(tensors, {"format": CHECKPOINT_FORMAT, "state": json.dumps(meta)})


def decode_checkpoint(data: bytes) -> tuple[Tensors, dict[str, Any], CheckpointKey]:
    """Parse :func:`encode_checkpoint`'s bytes: the tensors, the header and the key.

    Raises:
        ValueError: the bytes are not a checkpoint of this format.
    """
    try:
        tensors = load_tensors(data)
    except Exception as exc:  # safetensors' own error type is no ValueError
        raise ValueError(f"not a safetensors file: {exc}") from exc
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    meta = header.get("__metadata__") or {}
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not a {CHECKPOINT_FORMAT} file (format {meta.get('format')!r})")
    info = json.loads(meta["state"])
    key = CheckpointKey(**info.pop("key"))
    return tensors, info, key


class CheckpointStore:
    """The conversation checkpoints of one run.

    Args:
        output_uri: the run's output prefix (local folder or ``s3://bucket/prefix``).
        run_id: the run's id.
        endpoint_url: an explicit S3 endpoint (else the environment's).
    """

    def __init__(self, output_uri: str, run_id: str, endpoint_url: str | None = None) -> None:
        self.root = join_uri(output_uri, RUNS_DIR, validate_run_id(run_id), CHECKPOINTS_DIR)
        self.endpoint_url = endpoint_url

    def folder_uri(self, conversation_id: str) -> str:
        """Where one conversation's checkpoints live."""
        return join_uri(self.root, conversation_key(conversation_id))

    def save(
        self,
        conversation_id: str,
        key: CheckpointKey,
        position: int,
        tensors: Tensors,
        header: dict[str, Any],
    ) -> str:
        """Write a checkpoint (atomic, under a unique name), then drop the older ones.

        Args:
            conversation_id: the conversation's id.
            key: what the checkpoint is valid for.
            position: utterances labeled (newer checkpoints have higher positions).
            tensors: the state's named tensors.
            header: the state's JSON-able rest.

        Returns:
            The checkpoint's URI.
        """
        folder = self.folder_uri(conversation_id)
        uri = join_uri(folder, checkpoint_name(position))
        write_bytes_atomic(encode_checkpoint(tensors, header, key), uri, self.endpoint_url)
        for older, name in self._listed(folder):
            # Only older ones: a slow writer must never delete a newer checkpoint.
            if older < position:
                self._remove(join_uri(folder, name))
        return uri

    def load(
        self,
        conversation_id: str,
        key: CheckpointKey,
        parse: Callable[[Tensors, dict[str, Any]], T],
    ) -> T | None:
        """The newest valid checkpoint of a conversation for ``key``, or None.

        Args:
            conversation_id: the conversation's id.
            key: what the checkpoint must be valid for.
            parse: turns a checkpoint's tensors and header into the caller's state; a
                ``ValueError`` (or ``KeyError``, ``TypeError``) from it makes the checkpoint
                unreadable.

        An unreadable checkpoint is skipped for the next older one; a checkpoint for another
        key (model, labeling config or input) is ignored, with a log line naming what differs.
        """
        folder = self.folder_uri(conversation_id)
        for position, name in sorted(self._listed(folder), reverse=True):
            uri = join_uri(folder, name)
            fs, path = get_filesystem(uri, self.endpoint_url)
            try:
                tensors, header, found = decode_checkpoint(fs.cat_file(path))
                state = parse(tensors, header) if found == key else None
            except FileNotFoundError:
                continue  # deleted by a newer writer meanwhile
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("checkpoint %s is unreadable, skipped: %s", redact(uri), exc)
                continue
            if state is None:
                differs = [f for f in asdict(key) if getattr(found, f) != getattr(key, f)]
                log.warning(
                    "checkpoint of conversation %r at utterance %d ignored: its %s differs "
                    "from this run's; the conversation restarts from its first utterance",
                    conversation_id,
                    position,
                    ", ".join(differs),
                )
                return None
            return state
        return None

    def delete(self, conversation_id: str) -> None:
        """Delete a conversation's checkpoints (once its table file is committed)."""
        self._remove(self.folder_uri(conversation_id), recursive=True)

    def clear(self) -> None:
        """Delete every checkpoint of the run (when the run is committed)."""
        self._remove(self.root, recursive=True)

    def _listed(self, folder: str) -> list[tuple[int, str]]:
        found = []
        for name in list_names(folder, self.endpoint_url):
            match = _NAME.match(name)
            if match:
                found.append((int(match.group(1)), name))
        return found

    def _remove(self, uri: str, recursive: bool = False) -> None:
        fs, path = get_filesystem(uri, self.endpoint_url)
        try:
            fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete {redact(uri)}: {redact(str(exc))}") from exc
