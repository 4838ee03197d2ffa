"""model.onnx -> model.fp16.onnx: float16 weights and compute, float32 input and output.

This is the file TensorRT 10/11 builds as a strongly typed FP16 engine, and it runs on
ONNX Runtime too. Keeping I/O in float32 means callers (and the runtime's one image
pipeline) never handle float16 arrays.
"""

from __future__ import annotations

from pathlib import Path

from tl.export.onnx import read_spec_and_metadata, save_model, set_metadata
from tl.runtime.artifact import CHECKPOINT_KEY, MAX_BATCH_KEY

# Kept in float32: numerically touchy ops; none occur in the supported CNNs, listed for safety.
FP32_OPS = ["Softmax", "LogSoftmax", "ReduceMean", "Resize", "RandomNormalLike", "RandomUniformLike"]


def convert_fp16(src: str | Path, path: str | Path) -> Path:
    """FP32 ONNX ``src`` -> ``path`` (keep_io_types=True, topologically sorted, checked)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    proto = onnx.load(str(src))
    spec, meta = read_spec_and_metadata(proto, src)
    half = convert_float_to_float16(proto, keep_io_types=True, op_block_list=FP32_OPS, disable_shape_infer=False)
    # The converter appends the input Cast nodes at the end of the graph; onnx.checker
    # (and TensorRT's parser) require topological order.
    wrapped = OnnxModel(half)
    wrapped.topological_sort()
    half = wrapped.model
    set_metadata(half, spec, "fp16", meta.get(MAX_BATCH_KEY), meta.get(CHECKPOINT_KEY))
    half.producer_name = "tl"
    return save_model(half, path)
