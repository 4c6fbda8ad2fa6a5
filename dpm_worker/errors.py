"""A small error hierarchy.

Every error that is the input's fault is a ``BadInputError`` (also a ``ValueError``) and
names the input's URI, so a bad recording can become an error row instead of failing a job.
"""

from __future__ import annotations


class DpmError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(DpmError, ValueError):
    """A configuration value or a command-line argument is invalid."""


def check_fields(section: str, config: object, checks: dict[str, bool]) -> None:
    """Raise a ConfigError naming the first failed check as ``section.field`` with its value.

    Args:
        section: the config section name (as in YAML), e.g. ``train``.
        config: the config object whose fields were checked.
        checks: field name -> whether its value is valid.
    """
    for name, ok in checks.items():
        if not ok:
            raise ConfigError(f"{section}.{name} is invalid: {getattr(config, name)!r}")


class BadInputError(DpmError, ValueError):
    """An input (recording, manifest, model folder) is unusable.

    Args:
        message: what is wrong, with the offending value.
        uri: the input's URI or path; included in ``str(error)``.
    """

    def __init__(self, message: str, uri: str | None = None) -> None:
        self.uri = uri
        self.reason = message
        super().__init__(f"{message} [{uri}]" if uri else message)


class AudioError(BadInputError):
    """A recording is missing, empty, corrupt, undecodable, silent or contains NaN samples."""


class SegmentError(BadInputError):
    """A segment's times are negative, reversed or outside its recording."""


class DiarizationError(BadInputError):
    """A diarization (RTTM file) is missing, unreadable, malformed or names another recording."""


class ManifestError(BadInputError):
    """A manifest is missing columns or has an invalid row.

    Args:
        message: what is wrong.
        uri: the manifest's URI.
        row: 0-based row number in the manifest, when one row is at fault.
        column: the offending column, when one column is at fault.
    """

    def __init__(
        self,
        message: str,
        uri: str | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.row = row
        self.column = column
        where = []
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(prefix + message, uri)


class LabelError(BadInputError):
    """An emotion label is not in the label set, or a label set does not match the model."""


class ModelError(BadInputError):
    """A model folder is missing files, has mismatched files, or cannot hold the input."""


class StorageError(DpmError):
    """An input or output location is unreachable or not writable."""
