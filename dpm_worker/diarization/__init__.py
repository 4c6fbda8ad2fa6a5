"""Who speaks when in a mono recording: a pretrained speaker encoder (resemblyzer's GE2E
weights from its pinned wheel) whitened by the within-speaker covariance, k-means over chunk
embeddings and a Viterbi re-segmentation; and the diarization error rate that scores it."""

from typing import Any

from dpm_worker.diarization.diarizer import DiarizationConfig, chunk_embeddings, diarize
from dpm_worker.diarization.scoring import diarization_error
from dpm_worker.diarization.whitening import fit_whitening

__all__ = [
    "DiarizationConfig",
    "chunk_embeddings",
    "diarization_error",
    "diarize",
    "fit_whitening",
    "load_speaker_encoder",
]


def __getattr__(name: str) -> Any:
    """``load_speaker_encoder`` on demand: importing the package does not import torch."""
    if name == "load_speaker_encoder":
        from dpm_worker.diarization.encoder import load_speaker_encoder

        return load_speaker_encoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
