"""Model architectures, registry, and shipped weights addressed by name + sha256."""
from wsicodec.models.registry import (
    ARCHITECTURES,
    Architecture,
    ModelCard,
    ModelError,
    build_model,
    list_models,
    list_retired,
    load_model,
    model_dir,
    save_model,
)

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "ModelCard",
    "ModelError",
    "build_model",
    "list_models",
    "list_retired",
    "load_model",
    "model_dir",
    "save_model",
]
