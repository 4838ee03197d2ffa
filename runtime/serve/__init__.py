"""tl.runtime.serve: the Open Inference Protocol (KServe v2 REST) server with dynamic batching.

Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client); never torch.
"""

from tl.runtime.serve.options import ServeOptions

__all__ = ["ServeOptions", "serve", "load_models", "create_app"]


def __getattr__(name):  # lazy: `tl --help` lists the command without importing fastapi
    if name in ("serve", "load_models"):
        from tl.runtime.serve import server

        return getattr(server, name)
    if name == "create_app":
        from tl.runtime.serve.app import create_app

        return create_app
    raise AttributeError(name)
