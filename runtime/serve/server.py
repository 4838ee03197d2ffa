"""`serve`: load the models, bind the ports, run uvicorn (HTTP) and the gRPC service on one event loop
until SIGTERM / Ctrl-C, then drain."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Callable

from tl.runtime.errors import TLError
from tl.runtime.serve.options import ServeOptions


def bind(host: str, port: int, flag: str = "--port") -> socket.socket:
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
        raise TLError(f"cannot listen on {host}:{port}: {e.strerror}; pick another {flag} (0: any free one)") from None
    sock.listen(2048)
    return sock


def serve(source: str | Path, options: ServeOptions | None = None,
          on_ready: Callable[[str, list, str | None], None] | None = None) -> None:
    """Serve until a signal; ``on_ready(url, models, grpc_address)`` is called once the ports are bound
    (the CLI prints it; the address is None without gRPC)."""
    try:
        import uvicorn

        from tl.runtime.serve.app import create_app, with_fast_infer
        from tl.runtime.serve.endpoints import Endpoints
    except ImportError as e:
        raise TLError(f"tl serve needs the serve extra ({e.name} is not installed): pip install 'tl[serve]'") from None
    options = options or ServeOptions()
    grpc_transport = _grpc_transport() if options.grpc_port is not None else None
    endpoints = Endpoints.load(source, options, version=_version())
    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    companions = []

    async def main() -> None:
        grpc_address = None
        if grpc_transport is not None:  # bound on this loop, the one the batchers run on
            with bind(options.host, options.grpc_port, "--grpc-port") as probe:  # a taken port: one clear error
                free = probe.getsockname()[1]
            companions.append(grpc_transport(endpoints, options.host, free))
            grpc_address = f"{_url_host(host)}:{companions[0].bind()}"
        if on_ready:
            on_ready(f"http://{_url_host(host)}:{port}", list(endpoints.models.values()), grpc_address)
        await server.serve(sockets=[sock])

    config = uvicorn.Config(with_fast_infer(create_app(endpoints, companions), endpoints), log_level="warning",
                            access_log=False, lifespan="on", timeout_keep_alive=30)
    server = _server_class()(config)
    try:
        _run(main(), config)
    finally:
        sock.close()
        endpoints.close()


def _grpc_transport():
    try:
        from tl.runtime.serve.grpc_app import GrpcTransport
    except ImportError as e:
        raise TLError(f"tl serve's gRPC service needs grpcio and tritonclient[grpc] ({e.name} is not installed): "
                      "pip install 'tl[serve]', or serve HTTP only with --no-grpc") from None
    return GrpcTransport


def _url_host(host: str) -> str:
    return host if ":" not in host else f"[{host}]"


def _run(main, config) -> None:
    """``main`` on the event loop uvicorn would pick (uvloop where installed)."""
    factory = config.get_loop_factory() if hasattr(config, "get_loop_factory") else None
    if factory is None and hasattr(config, "setup_event_loop"):  # uvicorn before get_loop_factory
        config.setup_event_loop()
    if factory is None:
        asyncio.run(main)
    elif hasattr(asyncio, "Runner"):  # Python 3.11+
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)
    else:
        loop = factory()
        try:
            loop.run_until_complete(main)
        finally:
            loop.close()


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
