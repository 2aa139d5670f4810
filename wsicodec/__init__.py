"""wsicodec: learned compression of pathology whole-slide images."""
__version__ = "0.1.0"


def open_slide(path, **kwargs):
    """Open a wsicodec store like ``openslide.OpenSlide`` (see :class:`wsicodec.store.WsiStore`)."""
    from wsicodec.store import WsiStore

    return WsiStore(path, **kwargs)


__all__ = ["open_slide", "__version__"]
