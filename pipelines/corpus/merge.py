"""``dpm merge``: join several manifests into one training manifest, ids tagged per corpus.

Usage: ``dpm merge --out OUT.parquet TAG=CORPUS [TAG=CORPUS ...]``. CORPUS is a manifest file
or a folder holding ``manifest.parquet`` (local or ``s3://``), opened exactly as
``dpm train --corpus`` opens it. Every row of every input is kept, in input order (file order
within an input, inputs in argument order). ``conversation_id`` and ``speaker`` become
``TAG_<value>``: two synthetic corpora both have ``conv_0000`` and ``conv_0000_A``, and without
the tag their conversations and speakers would merge. ``audio_uri`` is made absolute (relative
values resolve against the input manifest's folder) so the merged file works from anywhere.
Every other column is untouched; the schema is the canonical one plus the union of the inputs'
extra columns (an extra column absent from some input is null there).

Tags may hold letters, digits, ``.`` and ``-`` but no ``_``: the first ``_`` of a merged id
then always ends the tag, so two different (tag, id) pairs can never give the same merged id
(with ``a`` + ``b_c`` and ``a_b`` + ``c`` they would).
"""

from __future__ import annotations

import argparse
import json
import logging
import posixpath
import re

import pyarrow as pa
import pyarrow.compute as pc

from dpm_worker.corpus import (
    MANIFEST_SCHEMA,
    ManifestSource,
    resolve_audio,
    validate_manifest,
    write_manifest,
)
from dpm_worker.errors import BadInputError, ConfigError

log = logging.getLogger("dpm.merge")

_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
_TAGGED_COLUMNS = ("conversation_id", "speaker")
# Parquet only: it keeps the extra columns' types (CSV would turn them into text).
_OUT_EXTENSIONS = (".parquet", ".pq")
SOURCES_METADATA_KEY = b"dpm.merge_sources"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the merged manifest (.parquet)")
    parser.add_argument("--endpoint-url", default=None, help="S3 endpoint (else from env)")
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="TAG=CORPUS",
        help="a tag and a manifest file or folder holding manifest.parquet (local or s3://)",
    )


def run(args: argparse.Namespace) -> int:
    inputs = parse_inputs(args.inputs)
    if posixpath.splitext(args.out)[1].lower() not in _OUT_EXTENSIONS:
        raise ConfigError(
            f"--out must be a Parquet file ({'/'.join(_OUT_EXTENSIONS)}), got {args.out!r}"
        )
    table, counts = merge_manifests(inputs, endpoint_url=args.endpoint_url)
    write_manifest(table, args.out, endpoint_url=args.endpoint_url)
    per_tag = ", ".join(
        f"{tag}: {rows} rows / {conversations} conversations"
        for tag, (rows, conversations) in counts.items()
    )
    print(f"merged {table.num_rows} rows into {args.out} ({per_tag})")
    return 0


def parse_inputs(values: list[str]) -> list[tuple[str, str]]:
    """Split ``TAG=CORPUS`` arguments into ``(tag, corpus)`` pairs, in argument order.

    Raises:
        ConfigError: no ``=``, an empty or invalid tag, an empty corpus, or a repeated tag.
    """
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for value in values:
        tag, sep, corpus = value.partition("=")
        if not sep:
            raise ConfigError(f"expected TAG=CORPUS, got {value!r} (no '=')")
        if not _TAG.fullmatch(tag):
            raise ConfigError(
                f"invalid tag {tag!r} in {value!r}: use letters, digits, '.' or '-', "
                "starting with a letter or digit (no '_', which separates the tag from the id)"
            )
        if not corpus:
            raise ConfigError(f"empty corpus in {value!r}")
        if tag in seen:
            raise ConfigError(f"duplicate tag {tag!r}: each input needs its own tag")
        seen.add(tag)
        pairs.append((tag, corpus))
    return pairs


def merge_manifests(
    inputs: list[tuple[str, str]], *, endpoint_url: str | None = None
) -> tuple[pa.Table, dict[str, tuple[int, int]]]:
    """Read, tag and concatenate manifests.

    Args:
        inputs: ``(tag, corpus)`` pairs, as from :func:`parse_inputs`.
        endpoint_url: an explicit S3 endpoint.

    Returns:
        The merged table (canonical columns, then the union of the inputs' extra columns;
        schema metadata records each tag's input URI) and ``{tag: (rows, conversations)}``.

    Raises:
        ManifestError: an input is missing, unreadable or invalid.
        BadInputError: two inputs give one extra column incompatible types.
    """
    tagged: list[tuple[str, pa.Table]] = []
    counts: dict[str, tuple[int, int]] = {}
    sources: dict[str, str] = {}
    for tag, corpus in inputs:
        source = ManifestSource(corpus, endpoint_url)
        # validate_manifest keeps file order (read_manifest would sort the rows).
        table = validate_manifest(source.read(), source.uri)
        table = resolve_audio(table, source.base_dir)
        table = _tag_ids(table, tag)
        tagged.append((tag, table))
        conversations = pc.count_distinct(table.column("conversation_id")).as_py()
        counts[tag] = (table.num_rows, conversations)
        sources[tag] = source.uri
        log.info(
            "%s: %d rows, %d conversations from %s", tag, table.num_rows, conversations, source.uri
        )
    schema = merged_schema(tagged)
    merged = pa.concat_tables([_conform(table, schema, tag) for tag, table in tagged])
    metadata = {SOURCES_METADATA_KEY: json.dumps(sources).encode()}
    return merged.replace_schema_metadata(metadata), counts


def merged_schema(tables: list[tuple[str, pa.Table]]) -> pa.Schema:
    """MANIFEST_SCHEMA plus every extra column of the (cast) input tables, in first-seen order.

    An extra column's type must agree across inputs up to a lossless promotion (int16 and
    int64 give int64); it stays non-nullable only if every input has it, non-nullable.

    Raises:
        BadInputError: two inputs give one extra column types that cannot be unified.
    """
    extras: dict[str, pa.Field] = {}
    first_tag: dict[str, str] = {}
    for tag, table in tables:
        for field in table.schema:
            if field.name in MANIFEST_SCHEMA.names:
                continue
            seen = extras.get(field.name)
            if seen is None:
                extras[field.name] = field.remove_metadata()
                first_tag[field.name] = tag
                continue
            try:
                unified = pa.unify_schemas(
                    [pa.schema([seen]), pa.schema([field.remove_metadata()])],
                    promote_options="permissive",
                ).field(0)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise BadInputError(
                    f"column {field.name!r} is {seen.type} in input {first_tag[field.name]!r} "
                    f"but {field.type} in input {tag!r}: {exc}"
                ) from exc
            extras[field.name] = unified.with_nullable(seen.nullable or field.nullable)
    for name, field in extras.items():
        if any(name not in table.column_names for _, table in tables):
            extras[name] = field.with_nullable(True)
    return pa.schema(list(MANIFEST_SCHEMA) + list(extras.values()))


def _tag_ids(table: pa.Table, tag: str) -> pa.Table:
    """``conversation_id`` and ``speaker`` prefixed with ``TAG_``."""
    prefix = pa.scalar(tag + "_")
    for name in _TAGGED_COLUMNS:
        position = table.schema.get_field_index(name)
        joined = pc.binary_join_element_wise(prefix, table.column(position), "")
        table = table.set_column(position, table.schema.field(position), joined)
    return table


def _conform(table: pa.Table, schema: pa.Schema, tag: str) -> pa.Table:
    """``table`` with ``schema``'s columns in order, absent extras as nulls."""
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            try:
                arrays.append(table.column(field.name).cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise BadInputError(
                    f"input {tag!r}: column {field.name!r} cannot be read as {field.type}: {exc}"
                ) from exc
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
