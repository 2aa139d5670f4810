"""wsicodec: learned compression of pathology whole-slide images."""
__version__ = "0.1.0"
