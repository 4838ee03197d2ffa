"""tl.export: a checkpoint -> ONNX FP32/FP16/INT8 and TensorRT engines, each checked against PyTorch.

    from tl.export import ExportOptions, export
    result = export(ExportOptions(checkpoint="runs/x/best.pt", out="exports/x", int8=True))

Every artifact is written to a temp file, validated and then renamed into place, and is
compared with eager PyTorch FP32 on the same images (export.json). The steps are in
``tl.export.pipeline``; the options and their checks in ``tl.export.options``.
"""

from tl.runtime.lazy import lazy_exports

__all__ = ["ExportOptions", "ExportResult", "export"]

# Lazy: `tl export --help` must not import torch or onnx.
_HOMES = {"ExportOptions": "tl.export.options", "ExportResult": "tl.export.pipeline", "export": "tl.export.pipeline"}

__getattr__ = lazy_exports(__name__, _HOMES)
