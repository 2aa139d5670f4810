"""Training of wsicodec models (``wsicodec train``). The training loop (torch, compressai) is
imported on first use, so the command line's other commands start without it."""

__all__ = ["TrainConfig", "Trainer", "validate"]


def __getattr__(name: str):
    if name in __all__:
        from wsicodec.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
