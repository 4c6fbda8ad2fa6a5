from pipelines.label.actors import connect
from pipelines.label.bookkeeping import Progress
from pipelines.label.compact import JOURNAL, compact_run
from pipelines.label.config import (
    LabelJobConfig,
    load_config,
    public_config,
    strip_userinfo,
)
from pipelines.label.job import LabelJob, finish
from pipelines.label.plan import prepare

__all__ = [
    "JOURNAL",
    "LabelJob",
    "LabelJobConfig",
    "Progress",
    "compact_run",
    "connect",
    "finish",
    "load_config",
    "prepare",
    "public_config",
    "strip_userinfo",
]
