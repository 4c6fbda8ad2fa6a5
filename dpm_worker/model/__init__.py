from dpm_worker.model.backbone import (
    HISTORY_FORMATS,
    MODEL_META,
    SCRATCH_TEXT_TOKENS,
    BackboneConfig,
    EmotionModel,
    build_backbone,
    default_model_path,
    extend_base_model,
    load_model,
    save_model,
)
from dpm_worker.model.folder import MANIFEST_NAME, write_file_manifest
from dpm_worker.model.vocab import StreamVocab

__all__ = [
    "HISTORY_FORMATS",
    "BackboneConfig",
    "EmotionModel",
    "MANIFEST_NAME",
    "MODEL_META",
    "SCRATCH_TEXT_TOKENS",
    "StreamVocab",
    "build_backbone",
    "default_model_path",
    "extend_base_model",
    "load_model",
    "save_model",
    "write_file_manifest",
]
