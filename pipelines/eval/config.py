"""The labeling settings of ``dpm eval`` and ``dpm bench memory``, read by ``pipelines.config``.

Both commands take the ``labeling`` section of a ``dpm label`` config (``--config FILE`` with a
top-level ``labeling:`` key) and dotted overrides such as ``labeling.memory.write_target=audio``,
instead of one flag per memory field. The modes come from the command's own mode flag.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any

from dpm_worker.memory import LabelingConfig, MemoryConfig
from pipelines.config import add_config_arguments, build_dataclass, check_sections, merge_tree

SECTIONS = ("labeling",)


def add_labeling_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and ``KEY=VALUE`` overrides of the ``labeling`` section (help lists keys)."""
    labeling = [f.name for f in dataclasses.fields(LabelingConfig) if f.name != "memory"]
    memory = [f.name for f in dataclasses.fields(MemoryConfig)]
    add_config_arguments(
        parser,
        {
            "labeling": ", ".join(labeling) + ", memory",
            "labeling.memory": ", ".join(memory),
        },
        "labeling.memory.write_target=audio labeling.memory.lr=1e-4",
    )


def load_labeling_config(args: argparse.Namespace, flags: Mapping[str, Any]) -> LabelingConfig:
    """The ``labeling`` section of ``--config``, then ``flags`` (dotted keys), then overrides."""
    tree = merge_tree(args.config, flags, args.overrides)
    check_sections(tree, SECTIONS)
    return build_dataclass(LabelingConfig, tree.get("labeling"), "labeling.")
