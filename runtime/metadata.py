"""The metadata_props keys of every ONNX file tl writes, and the values they take.

Its own module so that the ONNX reader (tl.runtime.onnxmeta) and the table of artifact
kinds (tl.runtime.artifact) both read it without either importing the other.
"""

SPEC_KEY = "tl.spec"  # the ModelSpec as JSON
PRECISION_KEY = "tl.precision"  # one of PRECISIONS
MAX_BATCH_KEY = "tl.max_batch"  # the dynamic batch bound: the runtime and TensorRT EP profiles size from it
CHECKPOINT_KEY = "tl.checkpoint_sha256"  # sha256 of the checkpoint file it was exported from (tl bench compares it)

PRECISIONS = ("fp32", "fp16", "int8")  # what PRECISION_KEY says, and what an artifact's file name says
# The dynamic batch bound an export writes into MAX_BATCH_KEY unless told otherwise, and the one
# the runtime assumes for an ONNX file without the key.
DEFAULT_MAX_BATCH = 32
