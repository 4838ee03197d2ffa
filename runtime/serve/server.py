"""`serve`: load the models, bind the port, run uvicorn until SIGTERM / Ctrl-C, then drain."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable

from tl.runtime.errors import TLError
from tl.runtime.serve.options import ServeOptions


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts so a taken port is one clear error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise TLError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise TLError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port (0: any free one)") from None
    sock.listen(2048)
    return sock


def serve(source: str | Path, options: ServeOptions | None = None,
          on_ready: Callable[[str, list], None] | None = None) -> None:
    """Serve until a signal; ``on_ready(url, models)`` is called once the port is bound (the CLI prints it)."""
    try:
        import uvicorn

        from tl.runtime.serve.app import create_app, with_fast_infer
        from tl.runtime.serve.endpoints import Endpoints
    except ImportError as e:
        raise TLError(f"tl serve needs the serve extra ({e.name} is not installed): pip install 'tl[serve]'") from None
    options = options or ServeOptions()
    endpoints = Endpoints.load(source, options, version=_version())
    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(with_fast_infer(create_app(endpoints), endpoints), log_level="warning", access_log=False,
                            lifespan="on", timeout_keep_alive=30)
    server = _server_class()(config)
    if on_ready:
        on_ready(f"http://{host if ':' not in host else f'[{host}]'}:{port}", list(endpoints.models.values()))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        endpoints.close()


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after its graceful shutdown; a drained stop is a normal exit (0).
            self._captured_signals.clear()

    return Server


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tl")
    except PackageNotFoundError:
        return "0"
