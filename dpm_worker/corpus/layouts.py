"""Shared pieces of the corpus layout readers: label mappings and the drop summary.

The readers themselves live in :mod:`dpm_worker.corpus.iemocap` (``read_iemocap``),
:mod:`dpm_worker.corpus.meld` (``read_meld``), :mod:`dpm_worker.corpus.ravdess`
(``read_ravdess``), :mod:`dpm_worker.corpus.emovo` (``read_emovo``),
:mod:`dpm_worker.corpus.turev` (``read_turev``) and :mod:`dpm_worker.corpus.labelled`
(``read_labelled``, a CSV of labelled files). Corpus emotion
codes go through a mapping table to the model's label set; an unmapped code is dropped and
counted in a :class:`DropSummary`, never relabeled. Roots may be local folders or ``s3://``.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pyarrow as pa

from dpm_worker.corpus.schema import MANIFEST_SCHEMA
from dpm_worker.errors import BadInputError, ConfigError
from dpm_worker.storage import get_filesystem, is_remote

IEMOCAP_CODES: tuple[str, ...] = (
    "neu", "hap", "exc", "sad", "ang", "fru", "fea", "sur", "dis", "oth", "xxx",
)  # fmt: skip
IEMOCAP_4CLASS: Mapping[str, str] = MappingProxyType(
    {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}
)
MELD_EMOTIONS: tuple[str, ...] = (
    "neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear",
)  # fmt: skip
MELD_7CLASS: Mapping[str, str] = MappingProxyType({code: code for code in MELD_EMOTIONS})
# The default model's 4 classes; surprise, disgust and fear have no counterpart and are dropped.
MELD_4CLASS: Mapping[str, str] = MappingProxyType(
    {"neutral": "neutral", "joy": "happy", "sadness": "sad", "anger": "angry"}
)
RAVDESS_EMOTIONS: tuple[str, ...] = (
    "neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised",
)  # fmt: skip
# CORPORA.md: neutral + calm -> neutral; fearful, disgust and surprised are dropped.
RAVDESS_4CLASS: Mapping[str, str] = MappingProxyType(
    {"neutral": "neutral", "calm": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"}
)
RAVDESS_8CLASS: Mapping[str, str] = MappingProxyType({e: e for e in RAVDESS_EMOTIONS})
EMOVO_CODES: tuple[str, ...] = ("neu", "gio", "tri", "rab", "dis", "pau", "sor")
# CORPORA.md: joy -> happy, sadness -> sad, anger -> angry; disgust, fear, surprise dropped.
EMOVO_4CLASS: Mapping[str, str] = MappingProxyType(
    {"neu": "neutral", "gio": "happy", "tri": "sad", "rab": "angry"}
)
TUREV_EMOTIONS: tuple[str, ...] = ("angry", "calm", "happy", "sad")  # the folders, lower-cased
# CORPORA.md: calm -> neutral.
TUREV_4CLASS: Mapping[str, str] = MappingProxyType(
    {"calm": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"}
)
MAPPINGS: Mapping[str, Mapping[str, Mapping[str, str]]] = MappingProxyType(
    {
        "iemocap": MappingProxyType({"4class": IEMOCAP_4CLASS}),
        "meld": MappingProxyType({"7class": MELD_7CLASS, "4class": MELD_4CLASS}),
        "ravdess": MappingProxyType({"4class": RAVDESS_4CLASS, "8class": RAVDESS_8CLASS}),
        "emovo": MappingProxyType({"4class": EMOVO_4CLASS}),
        "turev": MappingProxyType({"4class": TUREV_4CLASS}),
    }
)
EXAMPLES = 5  # how many offending items an error message lists


@dataclass
class DropSummary:
    """What a corpus reader kept and dropped, with counts by corpus code and by reason."""

    corpus: str
    kept: int = 0
    conversations: int = 0
    kept_labels: dict[str, int] = field(default_factory=dict)
    dropped_codes: dict[str, int] = field(default_factory=dict)
    dropped_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return sum(self.dropped_codes.values()) + sum(self.dropped_reasons.values())

    def count_kept(self, label: str) -> None:
        self.kept += 1
        self.kept_labels[label] = self.kept_labels.get(label, 0) + 1

    def count_code(self, code: str) -> None:
        self.dropped_codes[code] = self.dropped_codes.get(code, 0) + 1

    def count_reason(self, reason: str) -> None:
        self.dropped_reasons[reason] = self.dropped_reasons.get(reason, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus,
            "kept": self.kept,
            "conversations": self.conversations,
            "dropped": self.dropped,
            "kept_labels": dict(sorted(self.kept_labels.items())),
            "dropped_codes": dict(sorted(self.dropped_codes.items())),
            "dropped_reasons": dict(sorted(self.dropped_reasons.items())),
        }

    def format(self) -> str:
        """A short human-readable summary for the command line."""

        def counts(d: Mapping[str, int]) -> str:
            return ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "none"

        lines = [
            f"{self.corpus}: kept {self.kept} utterances in {self.conversations} conversations "
            f"({counts(self.kept_labels)})",
            f"dropped {self.dropped}: unmapped codes {counts(self.dropped_codes)}; "
            f"other {counts(self.dropped_reasons)}",
        ]
        return "\n".join(lines)


def load_mapping(spec: str | Mapping[str, str], corpus: str) -> dict[str, str]:
    """A code -> label mapping from a built-in name ("4class", "7class") or a JSON/YAML file.

    Raises:
        ConfigError: unknown name, unreadable file or a non-string entry (value named).
    """
    if isinstance(spec, Mapping):
        raw: Any = dict(spec)
    elif spec in MAPPINGS.get(corpus, {}):
        raw = dict(MAPPINGS[corpus][spec])
    elif os.path.splitext(spec)[1].lower() in (".json", ".yaml", ".yml"):
        fs, path = get_filesystem(spec)
        try:
            text = fs.cat_file(path).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read label mapping {spec}: {exc}") from exc
        if spec.endswith(".json"):
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    else:
        names = sorted(MAPPINGS.get(corpus, {}))
        raise ConfigError(f"unknown {corpus} mapping {spec!r}; use one of {names} or a .json/.yaml")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"label mapping {spec!r} must be a non-empty code -> label object")
    for code, label in raw.items():
        if not isinstance(code, str) or not isinstance(label, str) or not label.strip():
            raise ConfigError(f"label mapping entry {code!r}: {label!r} must map string to string")
    return {code.strip().lower(): label.strip() for code, label in raw.items()}


def manifest_table(records: list[dict[str, Any]], extras: pa.Schema) -> pa.Table:
    schema = pa.schema(list(MANIFEST_SCHEMA) + list(extras))
    return pa.Table.from_pylist(records, schema=schema)


def root_uri(root: str) -> str:
    return root.rstrip("/") if is_remote(root) else os.path.abspath(root)


def list_folder(fs: Any, path: str) -> dict[str, str]:
    """name -> type ("file"/"directory") of a folder's entries; empty when it does not exist."""
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    return {posixpath.basename(e["name"].rstrip("/")): e["type"] for e in entries}


def read_text(fs: Any, path: str, uri: str) -> str:
    try:
        data = fs.cat_file(path)
    except OSError as exc:
        raise BadInputError(f"cannot read annotation file: {exc}", uri) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Some corpus copies were re-saved in Windows-1252; decode rather than fail.
        return data.decode("cp1252", errors="replace")


def examples(items: Sequence[str]) -> str:
    more = f" and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else ""
    return ", ".join(items[:EXAMPLES]) + more
