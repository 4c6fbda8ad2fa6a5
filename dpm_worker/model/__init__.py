from dpm_worker.model.acoustic_head import AcousticHead, fit_acoustic_head, load_acoustic_head
from dpm_worker.model.backbone import (
    HISTORY_FORMATS,
    MODEL_META,
    SCRATCH_TEXT_TOKENS,
    BackboneConfig,
    EmotionModel,
    build_backbone,
    extend_base_model,
)
from dpm_worker.model.calibration import (
    CALIBRATION_FILE,
    Calibration,
    apply_temperature,
    fit_temperature,
    load_calibration,
)
from dpm_worker.model.device import DTYPES, pick_device
from dpm_worker.model.folder import MANIFEST_NAME, write_file_manifest
from dpm_worker.model.loading import default_model_path, load_model, save_calibrated, save_model
from dpm_worker.model.stream import IGNORE, fit_context, history_budget, tail, utterance_start
from dpm_worker.model.vocab import StreamVocab

__all__ = [
    "AcousticHead",
    "CALIBRATION_FILE",
    "Calibration",
    "apply_temperature",
    "fit_temperature",
    "load_calibration",
    "IGNORE",
    "HISTORY_FORMATS",
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
    "fit_acoustic_head",
    "fit_context",
    "history_budget",
    "load_acoustic_head",
    "load_model",
    "pick_device",
    "save_calibrated",
    "save_model",
    "tail",
    "utterance_start",
    "write_file_manifest",
]
