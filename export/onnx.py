"""FP32 ONNX export, the ModelSpec inside, batch left dynamic.

Opset 18 and up through the dynamo exporter; opset 17 (the newest TensorRT 8.6 parses)
through the TorchScript exporter, since dynamo cannot write anything older than 18. The
example input has batch 2, so a batch of 1 is never baked into a Reshape; the file is one
self-contained protobuf (no external data below 2 GB), so copying it copies the model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from tl.export.options import DEFAULT_OPSET, TORCHSCRIPT_OPSETS
from tl.runtime.artifact import (
    CHECKPOINT_KEY, DEFAULT_MAX_BATCH, MAX_BATCH_KEY, PRECISION_KEY, SPEC_KEY, spec_from_metadata,
)
from tl.runtime.errors import TLError
from tl.runtime.files import atomic_write_bytes
from tl.runtime.spec import ModelSpec

TWO_GB = 2**31


def set_metadata(model_proto, spec: ModelSpec, precision: str, max_batch: int | str | None = None,
                 checkpoint_sha256: str | None = None) -> None:
    """Put (or replace) tl.spec, tl.precision (tl.max_batch, tl.checkpoint_sha256) in metadata_props; other keys are kept."""
    ours = ((SPEC_KEY, PRECISION_KEY) + ((MAX_BATCH_KEY,) if max_batch is not None else ())
            + ((CHECKPOINT_KEY,) if checkpoint_sha256 else ()))
    keep = [(p.key, p.value) for p in model_proto.metadata_props if p.key not in ours]
    del model_proto.metadata_props[:]
    entries = [(SPEC_KEY, spec.to_json()), (PRECISION_KEY, precision)]
    if max_batch is not None:
        entries.append((MAX_BATCH_KEY, str(int(max_batch))))
    if checkpoint_sha256:
        entries.append((CHECKPOINT_KEY, checkpoint_sha256))
    for k, v in keep + entries:
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = k, v


def read_metadata(path_or_proto) -> dict[str, str]:
    import onnx

    proto = path_or_proto
    if not hasattr(proto, "metadata_props"):
        proto = onnx.load(str(path_or_proto), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def read_spec_and_metadata(proto, path: str | Path) -> tuple[ModelSpec, dict[str, str]]:
    """The tl spec and all metadata of an in-memory ONNX model loaded from ``path``."""
    meta = read_metadata(proto)
    return spec_from_metadata(meta, path), meta


def save_model(model_proto, path: str | Path, *, check: bool = True) -> Path:
    """Check, then write atomically as a single file (refuses the > 2 GB case explicitly).

    The model is serialized once: the checker and the file take the same bytes (serializing a
    large model takes seconds).
    """
    import onnx
    from google.protobuf.message import EncodeError

    try:
        data = model_proto.SerializeToString()
    except (EncodeError, ValueError):  # protobuf serializes (and sizes) no message of 2 GiB or more
        data = None
    if data is None or len(data) >= TWO_GB:
        size = "2 GiB or more" if data is None else f"{len(data) / 2**30:.1f} GiB"
        raise TLError(f"{Path(path).name}: the model is {size}, above protobuf's 2 GB limit for one file; "
                      "tl writes single-file ONNX only")
    if check:
        try:
            onnx.checker.check_model(data, full_check=True)
        except onnx.checker.ValidationError as e:  # a bug in the exporter or a converter, not the user's
            raise RuntimeError(f"{Path(path).name} failed onnx.checker: {e}") from e
    atomic_write_bytes(path, data)
    return Path(path)


def export_onnx(model, spec: ModelSpec, path: str | Path, *, opset: int = DEFAULT_OPSET, max_batch: int = DEFAULT_MAX_BATCH,
                checkpoint_sha256: str | None = None) -> Path:
    """Eager torch model -> ``path`` (FP32 ONNX, input "input", output "logits", dynamic batch);
    ``checkpoint_sha256`` stamps the file with the checkpoint it came from."""
    import torch

    if max_batch < 2:
        raise TLError(f"--max-batch must be at least 2 (got {max_batch})")
    model = getattr(model, "_orig_mod", model).eval().to("cpu").float()
    example = torch.randn(2, spec.input.channels, spec.input.height, spec.input.width, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        if opset in TORCHSCRIPT_OPSETS:
            proto = _torchscript_export(model, example, spec, opset)
        else:
            proto = _dynamo_export(model, example, spec, opset, max_batch)
    if [i.name for i in proto.graph.input] != [spec.input.name] or [o.name for o in proto.graph.output] != [spec.output.name]:
        raise RuntimeError(f"exported graph has unexpected I/O names: {[i.name for i in proto.graph.input]} -> {[o.name for o in proto.graph.output]}")
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise RuntimeError(f"asked torch.onnx for opset {opset}, it wrote opset {written}")
    set_metadata(proto, spec, "fp32", max_batch, checkpoint_sha256)
    proto.producer_name = "tl"
    return save_model(proto, path)


def _dynamo_export(model, example, spec: ModelSpec, opset: int, max_batch: int):
    import torch

    batch = torch.export.Dim("batch", min=1, max=max_batch)
    program = torch.onnx.export(
        model, (example,), dynamo=True, opset_version=opset,
        input_names=[spec.input.name], output_names=[spec.output.name],
        dynamic_shapes=({0: batch},), external_data=False, optimize=True, verbose=False,
    )
    return program.model_proto


def _torchscript_export(model, example, spec: ModelSpec, opset: int):
    import io

    import onnx
    import torch

    buffer = io.BytesIO()
    names = {spec.input.name: {0: "batch"}, spec.output.name: {0: "batch"}}
    torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset, do_constant_folding=True,
                      input_names=[spec.input.name], output_names=[spec.output.name], dynamic_axes=names)
    return onnx.load_from_string(buffer.getvalue())
