"""wsicodec: learned compression of pathology whole-slide images."""
from wsicodec.errors import WsicodecError

__version__ = "0.1.0"

__all__ = ["WsicodecError", "__version__", "open_slide"]


def open_slide(path, **kwargs):
    """Open a wsicodec store like ``openslide.OpenSlide`` (see :class:`wsicodec.store.WsiStore`)."""
    from wsicodec.store import WsiStore

    return WsiStore(path, **kwargs)
