"""Training of wsicodec models (``wsicodec train``)."""
from wsicodec.train.loop import TrainConfig, Trainer, validate

__all__ = ["TrainConfig", "Trainer", "validate"]
