"""One served model: its Classifier, its batcher, its metadata, and the infer call between them;
``load_models``: every model a file or repository holds, ready to serve."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from starlette.concurrency import run_in_threadpool

from tl.runtime import images
from tl.runtime.artifact import DEFAULT_MAX_BATCH, SPEC_KEY, kind_of, max_batch_bound, onnx_metadata, triton_platform
from tl.runtime.classifier import Classifier
from tl.runtime.errors import TLError
from tl.runtime.sidecar import sidecar_path
from tl.runtime.serve.batcher import Batcher
from tl.runtime.serve.errors import BadRequest
from tl.runtime.serve.options import ServeOptions
from tl.runtime.serve.protocol import InferRequest, Requested, Tensor, check_finite, classify, join_bytes
from tl.runtime.serve.repository import ModelEntry, find_models

if TYPE_CHECKING:
    from tl.runtime.serve.metrics import Metrics

PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}  # Triton's backend of each platform


def load_models(source: str | Path, options: ServeOptions, metrics: Metrics | None = None) -> list[ServedModel]:
    """Every model the source holds, loaded into a Classifier and given a batcher (whose batches ``metrics`` counts)."""
    served = []
    for entry in find_models(source, options.name):
        file_max = _check_servable(entry.path)
        clf = Classifier.load(entry.path, backend=options.backend, providers=options.providers,
                              device=options.device, intra_op_threads=options.threads)
        on_batch = metrics.on_batch(entry.name, entry.version) if metrics is not None else None
        served.append(ServedModel(entry, clf, max_batch=options.max_batch or entry.max_batch or clf.max_batch or file_max,
                                  max_delay_ms=options.max_delay_ms, queue_limit=options.queue, on_batch=on_batch))
    return served


def _check_servable(path: Path) -> int | None:
    """The file's own batch bound (ONNX metadata ``tl.max_batch``), after checking it carries the spec
    serving needs: a file from elsewhere is refused with what does work, before a backend loads it."""
    if kind_of(path) == "engine":
        if not sidecar_path(path).is_file():
            raise TLError(f"{path}: no sidecar {sidecar_path(path).name} beside the engine; tl serve needs the spec "
                          "it holds (labels, preprocessing): build the engine with `tl export --trt`, or serve the "
                          "ONNX file it was built from")
        return None
    metadata = onnx_metadata(path)
    if not metadata.get(SPEC_KEY):
        raise TLError(f"{path} has no tl model spec (metadata '{SPEC_KEY}'): it was not exported by tl, and tl serve "
                      "takes its labels and preprocessing from it; serve a file `tl export` wrote (export the "
                      "checkpoint with tl), or classify this file with `tl predict MODEL --spec spec.json`")
    return max_batch_bound(metadata)


class ServedModel:
    def __init__(self, entry: ModelEntry, clf: Classifier, *, max_batch: int | None, max_delay_ms: float,
                 queue_limit: int, on_batch: Callable[[int, list[float], float], None] | None = None):
        """``max_batch``: the model's max_batch_size, the one bound both batches and requests keep;
        None: the bound an export writes by default."""
        self.entry, self.clf = entry, clf
        self.max_batch = int(max_batch or DEFAULT_MAX_BATCH)
        self.max_delay_ms = max_delay_ms
        self.batcher = Batcher(clf.predict_logits, max_batch=self.max_batch, max_delay_s=max_delay_ms / 1000,
                               queue_limit=queue_limit, on_batch=on_batch)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def version(self) -> str:
        return self.entry.version

    def metadata(self) -> dict:
        """The protocol's model metadata; ``parameters`` (scalars, as the protocol's parameters are) says
        how to send encoded images instead of tensors, and carries the labels as a JSON-encoded list."""
        spec = self.clf.spec
        inp = spec.input
        return {
            "name": self.name, "versions": [self.version],
            "platform": triton_platform(self.clf.backend_name),
            "inputs": [{"name": inp.name, "datatype": "FP32", "shape": [-1, inp.channels, inp.height, inp.width]}],
            "outputs": [{"name": spec.output.name, "datatype": "FP32", "shape": [-1, spec.num_classes]}],
            "parameters": {
                "max_batch_size": self.max_batch, "precision": self.clf.precision,
                "labels": json.dumps(list(spec.classes)),
                "image_input": f"or send encoded images (JPEG, PNG, ...) as input '{inp.name}', datatype BYTES, "
                               "shape [N] (binary data: each element a 4-byte little-endian length and the file's "
                               "bytes); the server preprocesses them with the model's spec",
                SPEC_KEY: spec.to_json(),
            },
        }

    def config(self) -> dict:
        """The model's configuration in Triton's JSON form of config.pbtxt (what its config endpoint
        answers): what this server runs, whether it came from a file or a repository."""
        spec, inp = self.clf.spec, self.clf.spec.input
        platform = triton_platform(self.clf.backend_name)
        output = {"name": spec.output.name, "data_type": "TYPE_FP32", "dims": [spec.num_classes]}
        if self.entry.label_file:
            output["label_filename"] = self.entry.label_file
        on_gpu = bool(getattr(self.clf.backend, "on_gpu", False))
        group = {"name": self.name, "kind": "KIND_GPU" if on_gpu else "KIND_CPU", "count": 1}
        if on_gpu:
            group["gpus"] = [int(getattr(self.clf.backend, "device", 0))]
        return {
            "name": self.name, "platform": platform, "backend": PLATFORM_BACKENDS.get(platform, platform),
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": self.max_batch,
            "input": [{"name": inp.name, "data_type": "TYPE_FP32", "format": "FORMAT_NCHW",
                       "dims": [inp.channels, inp.height, inp.width]}],
            "output": [output],
            "dynamic_batching": {"max_queue_delay_microseconds": int(self.max_delay_ms * 1000)},
            "instance_group": [group],
            "default_model_filename": self.entry.path.name,
            "parameters": {SPEC_KEY: {"string_value": spec.to_json()},
                           "tl.labels": {"string_value": json.dumps(list(spec.classes))}},
        }

    async def prepare(self, req: InferRequest) -> np.ndarray:
        """A parsed request -> the rows it asks the model for (checked; encoded images decoded and preprocessed)."""
        self._requested(req)
        return await self._batch(req.inputs)

    async def answer(self, req: InferRequest, batch: np.ndarray) -> tuple[dict, list[tuple[dict, bytes | None]]]:
        """``prepare``'s rows, run in some batch -> the response header and each output's (metadata, binary data or None)."""
        logits = check_finite(self.name, await self.batcher.submit(batch))
        header = {"model_name": self.name, "model_version": self.version}
        if req.id is not None:
            header["id"] = req.id
        return header, [self._output(logits, r.name, r.binary, r.classification) for r in self._requested(req)]

    async def _batch(self, inputs: list[Tensor]) -> np.ndarray:
        inp = self.clf.spec.input
        if len(inputs) != 1 or inputs[0].name != inp.name:
            given = ", ".join(repr(t.name) for t in inputs)
            raise BadRequest(f"model '{self.name}' takes one input, '{inp.name}' (got {given})")
        t = inputs[0]
        if t.datatype == "BYTES":
            if not t.shape or int(np.prod(t.shape)) != t.shape[0]:
                raise BadRequest(f"input '{inp.name}': BYTES images take shape [N] or [N, 1] (got {t.shape})")
            self._check_batch(t.shape[0])
            return await run_in_threadpool(self._decode, t.data)
        expected = [inp.channels, inp.height, inp.width]
        if len(t.shape) != 4 or t.shape[1:] != expected:
            raise BadRequest(f"input '{inp.name}': expected FP32 shape [N, {', '.join(map(str, expected))}] "
                             f"(got {t.shape})")
        self._check_batch(t.shape[0])
        return t.data

    def _check_batch(self, rows: int) -> None:
        """As Triton: a request holds at most max_batch_size rows (the metadata and configuration say it)."""
        if rows > self.max_batch:
            raise BadRequest(f"inference request batch-size must be <= {self.max_batch} for '{self.name}' "
                             f"(got {rows}); send at most {self.max_batch} images a request")

    def _decode(self, items: list[bytes]) -> np.ndarray:
        """Encoded images -> the model's NCHW batch, through the one image pipeline (as `tl predict`)."""
        try:
            return images.preprocess(
                [images.decode_image(io.BytesIO(b), f"image {i} of the request") for i, b in enumerate(items)],
                self.clf.spec)
        except TLError as e:
            raise BadRequest(str(e)) from None

    def _requested(self, req: InferRequest):
        out = self.clf.spec.output.name
        requested = req.outputs if req.outputs is not None else [Requested(out, req.binary_output)]
        for r in requested:
            if r.name != out:
                raise BadRequest(f"model '{self.name}' has one output, '{out}' (requested {r.name!r})")
        return requested

    def _output(self, logits: np.ndarray, name: str, binary: bool, k: int) -> tuple[dict, bytes | None]:
        if k:
            items = classify(logits, k, self.clf.classes)
            meta = {"name": name, "datatype": "BYTES", "shape": [len(logits), min(k, logits.shape[1])]}
            values, blob = [b.decode() for b in items], (join_bytes(items) if binary else None)
        else:
            meta = {"name": name, "datatype": "FP32", "shape": list(logits.shape)}
            values, blob = None, (np.ascontiguousarray(logits, dtype="<f4").tobytes() if binary else None)
        if blob is not None:
            meta["parameters"] = {"binary_data_size": len(blob)}
        else:
            meta["data"] = values if values is not None else logits.ravel().tolist()
        return meta, blob
