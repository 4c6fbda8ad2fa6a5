"""Speaker diarizations in RTTM, the format pyannote, NeMo and WhisperX write.

One ``SPEAKER`` line per turn, ten space-separated fields (NIST RT-09)::

    SPEAKER <file-id> <channel> <onset> <duration> <NA> <NA> <speaker> <NA> <NA>

Only ``SPEAKER`` lines are turns; other record types (``SPKR-INFO``, ``LEXEME``, ...), blank
lines and ``#`` comments are skipped. A manifest row names its recording's RTTM in the optional
column ``rttm_uri``; the file holds that recording's turns (when it holds several file ids, the
one matching the recording's file name is used). Speaker names are kept as written, including
non-ASCII ones.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Sequence

from dpm_worker.corpus.schema import SpeakerTurn
from dpm_worker.errors import DiarizationError, StorageError
from dpm_worker.storage import get_filesystem, redact

_MIN_FIELDS = 8  # up to the speaker name; the two trailing <NA> are often omitted


def parse_rttm(text: str, uri: str | None = None) -> list[SpeakerTurn]:
    """Parse RTTM text into turns sorted by ``(start_s, end_s, speaker)``.

    Args:
        text: the file's content.
        uri: where it came from (named in errors).

    Raises:
        DiarizationError: a SPEAKER line with too few fields, a non-numeric, negative or
            non-finite onset, or a duration that is not positive (line number named).
    """
    turns = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#") or fields[0] != "SPEAKER":
            continue
        if len(fields) < _MIN_FIELDS:
            raise DiarizationError(
                f"RTTM line {number} has {len(fields)} fields, a SPEAKER line needs at least "
                f"{_MIN_FIELDS}: {line.strip()!r}",
                uri,
            )
        try:
            onset, duration = float(fields[3]), float(fields[4])
        except ValueError:
            raise DiarizationError(
                f"RTTM line {number}: onset/duration not numbers: {fields[3]!r} {fields[4]!r}", uri
            ) from None
        if not (math.isfinite(onset) and math.isfinite(duration)) or onset < 0 or duration <= 0:
            raise DiarizationError(
                f"RTTM line {number}: needs onset >= 0 and duration > 0, got "
                f"onset {onset} duration {duration}",
                uri,
            )
        turns.append(SpeakerTurn(fields[1], fields[7], onset, onset + duration))
    turns.sort(key=lambda t: (t.start_s, t.end_s, t.speaker))
    return turns


def format_rttm(turns: Sequence[SpeakerTurn], channel: int = 1) -> str:
    """RTTM text of ``turns``: one SPEAKER line each, in the given order, times in ms.

    Speaker names and file ids must not contain whitespace (RTTM fields are space-separated).

    Raises:
        DiarizationError: a name holds whitespace, or a turn is not ``0 <= start < end``.
    """
    lines = []
    for turn in turns:
        for value in (turn.file_id, turn.speaker):
            if not value or any(c.isspace() for c in value):
                raise DiarizationError(f"RTTM names need no whitespace, got {value!r}")
        if not 0 <= turn.start_s < turn.end_s:
            raise DiarizationError(f"turn times need 0 <= start < end, got {turn}")
        lines.append(
            f"SPEAKER {turn.file_id} {channel} {turn.start_s:.3f} "
            f"{turn.end_s - turn.start_s:.3f} <NA> <NA> {turn.speaker} <NA> <NA>\n"
        )
    return "".join(lines)


def read_rttm(
    uri: str, audio_uri: str | None = None, *, endpoint_url: str | None = None
) -> list[SpeakerTurn]:
    """Read the turns of one recording from an RTTM file (local or ``s3://``).

    Args:
        uri: the RTTM file.
        audio_uri: the recording it describes; when the file holds several file ids, the turns
            whose file id is this recording's file name without extension are kept.
        endpoint_url: an explicit S3 endpoint.

    Returns:
        The recording's turns, sorted by start time.

    Raises:
        DiarizationError: the file is missing or malformed, has no SPEAKER line, or holds
            several recordings none of which is ``audio_uri``.
    """
    fs, path = get_filesystem(uri, endpoint_url)
    try:
        with fs.open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise DiarizationError("RTTM file not found", redact(uri)) from None
    except OSError as exc:
        raise StorageError(f"cannot read {redact(uri)}: {exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DiarizationError(f"RTTM is not UTF-8 text: {exc}", redact(uri)) from None
    turns = parse_rttm(text, redact(uri))
    if not turns:
        raise DiarizationError("RTTM holds no SPEAKER turn", redact(uri))
    file_ids = {turn.file_id for turn in turns}
    if len(file_ids) == 1:
        return turns
    wanted = posixpath.splitext(posixpath.basename(audio_uri or ""))[0]
    mine = [turn for turn in turns if turn.file_id == wanted]
    if not mine:
        raise DiarizationError(
            f"RTTM holds {len(file_ids)} recordings ({sorted(file_ids)[:5]}...) and none is "
            f"{wanted!r}",
            redact(uri),
        )
    return mine
