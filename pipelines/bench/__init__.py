from pipelines.bench.separability import FEATURES, prosody_features

__all__ = [
    "FEATURES",
    "prosody_features",
]
