"""tl.runtime.serve: the Open Inference Protocol (KServe v2 / Triton, REST and gRPC) server with dynamic batching.

Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client, grpcio, tritonclient[grpc]); never torch. Exports are lazy
so that `tl --help` lists the command without importing fastapi.
"""

from tl.runtime.lazy import lazy_exports

__all__ = ["ServeOptions", "Endpoints", "serve", "load_models", "create_app"]

_HOMES = {"ServeOptions": "tl.runtime.serve.options", "Endpoints": "tl.runtime.serve.endpoints",
          "serve": "tl.runtime.serve.server", "load_models": "tl.runtime.serve.model",
          "create_app": "tl.runtime.serve.app"}

__getattr__ = lazy_exports(__name__, _HOMES)
