"""Serving the viewer app on a local port with uvicorn (what ``wsicodec view`` runs)."""
from __future__ import annotations

import logging
import socket
import sys

from wsicodec.errors import WsicodecError

__all__ = ["ViewError", "listen", "serve"]


class ViewError(WsicodecError):
    """The server cannot start; the message says why in one line."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one); refuses a port in use."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ViewError(f"cannot listen on {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets
    # that say they are TCP, and with it on, a tile's headers and body wait out a delayed ACK (~40 ms)
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        why = "the port is in use (choose another with --port)" if e.errno in (98, 48, 10048) else e.strerror
        raise ViewError(f"cannot listen on {host}:{port}: {why}") from None
    return sock


def serve(application, sock: socket.socket, open_browser: bool = False, log_level: str = "warning") -> None:
    """Serve an ASGI app on a listening socket until interrupted; open the page first if asked
    (the browser's connection waits in the socket's queue until the server takes it)."""
    import uvicorn

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("wsicodec view: %(message)s"))
    view_log = logging.getLogger("wsicodec.view")
    view_log.addHandler(handler)
    view_log.setLevel(logging.INFO)
    host, port = sock.getsockname()[:2]
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    print(f"wsicodec view: {url} (Ctrl-C stops)", file=sys.stderr, flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    server = uvicorn.Server(uvicorn.Config(application, log_level=log_level, access_log=False, lifespan="off"))
    try:
        server.run(sockets=[sock])
    finally:
        view_log.removeHandler(handler)
