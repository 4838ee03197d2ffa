"""Inference backends: one small class each (ONNX Runtime, TensorRT) behind the registry in
``tl.runtime.backends.registry``, which picks one by file suffix and imports it only when chosen."""

from tl.runtime.backends.registry import (
    BACKEND_CHOICES, REGISTRY, Backend, BackendEntry, entry_for, load_backend,
)

__all__ = ["BACKEND_CHOICES", "REGISTRY", "Backend", "BackendEntry", "entry_for", "load_backend"]
