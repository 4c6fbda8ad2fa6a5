from pipelines.corpus.merge import (
    SOURCES_METADATA_KEY,
    merge_manifests,
    merged_schema,
    parse_inputs,
    run,
)

__all__ = [
    "SOURCES_METADATA_KEY",
    "merge_manifests",
    "merged_schema",
    "parse_inputs",
    "run",
]
