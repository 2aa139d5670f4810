"""A DeepZoom viewer for stores: decoded tile by tile on demand, side by side with the original.

``wsicodec.view.app(store, against=None)`` is an ASGI app (Starlette) that a lab can mount behind
its own server; ``wsicodec view`` serves it with uvicorn and opens the page.
"""
from wsicodec.view.server import TILE_FORMATS, Viewer, app

__all__ = ["TILE_FORMATS", "Viewer", "app"]
