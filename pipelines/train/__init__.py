from pipelines.train.backbone import load_settings

__all__ = [
    "load_settings",
]
