"""tl.export: a checkpoint -> ONNX FP32/FP16/INT8 and TensorRT engines, each checked against PyTorch.

    from tl.export import ExportOptions, export
    result = export(ExportOptions(checkpoint="runs/x/best.pt", out="exports/x", int8=True))

Every artifact is written to a temp file, validated and then renamed into place, and is
compared with eager PyTorch FP32 on the same images (export.json). The steps are in
``tl.export.pipeline``; the options and their checks in ``tl.export.options``.
"""

__all__ = ["ExportOptions", "ExportResult", "export"]


def __getattr__(name):  # lazy: `tl export --help` must not import torch or onnx
    if name == "ExportOptions":
        from tl.export.options import ExportOptions

        return ExportOptions
    if name in ("ExportResult", "export"):
        from tl.export import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'tl.export' has no attribute {name!r}")
