from dpm_worker.model.backbone import (
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
from dpm_worker.model.device import DTYPES, pick_device
from dpm_worker.model.folder import MANIFEST_NAME, write_manifest
from dpm_worker.model.vocab import StreamVocab

__all__ = [
    "BackboneConfig",
    "DTYPES",
    "EmotionModel",
    "MANIFEST_NAME",
    "MODEL_META",
    "SCRATCH_TEXT_TOKENS",
    "StreamVocab",
    "build_backbone",
    "default_model_path",
    "extend_base_model",
    "load_model",
    "pick_device",
    "save_model",
    "write_manifest",
]
