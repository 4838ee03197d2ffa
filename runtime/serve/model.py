"""One served model: its Classifier, its batcher, its metadata, and the infer call between them;
``load_models``: every model a file or repository holds, ready to serve."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from starlette.concurrency import run_in_threadpool

from tl.runtime import images
from tl.runtime.artifact import SPEC_KEY, triton_platform
from tl.runtime.classifier import DEFAULT_BATCH_SIZE, Classifier
from tl.runtime.errors import TLError
from tl.runtime.serve.batcher import Batcher
from tl.runtime.serve.errors import BadRequest
from tl.runtime.serve.options import ServeOptions
from tl.runtime.serve.protocol import InferRequest, Requested, Tensor, check_finite, classify, join_bytes
from tl.runtime.serve.repository import ModelEntry, find_models

if TYPE_CHECKING:
    from tl.runtime.serve.metrics import Metrics


def load_models(source: str | Path, options: ServeOptions, metrics: Metrics | None = None) -> list[ServedModel]:
    """Every model the source holds, loaded into a Classifier and given a batcher (whose batches ``metrics`` counts)."""
    served = []
    for entry in find_models(source, options.name):
        clf = Classifier.load(entry.path, backend=options.backend, providers=options.providers,
                              device=options.device, intra_op_threads=options.threads)
        on_batch = metrics.on_batch(entry.name, entry.version) if metrics is not None else None
        served.append(ServedModel(entry, clf, max_batch=options.max_batch, max_delay_ms=options.max_delay_ms,
                                  queue_limit=options.queue, on_batch=on_batch))
    return served


class ServedModel:
    def __init__(self, entry: ModelEntry, clf: Classifier, *, max_batch: int | None, max_delay_ms: float,
                 queue_limit: int, on_batch: Callable[[int, list[float]], None] | None = None):
        self.entry, self.clf = entry, clf
        self.max_batch = int(max_batch or entry.max_batch or clf.max_batch or DEFAULT_BATCH_SIZE)
        self.batcher = Batcher(clf.predict_logits, max_batch=self.max_batch, max_delay_s=max_delay_ms / 1000,
                               queue_limit=queue_limit, on_batch=on_batch)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def version(self) -> str:
        return self.entry.version

    def metadata(self) -> dict:
        """The protocol's model metadata; ``parameters`` says how to send encoded images instead of tensors."""
        spec = self.clf.spec
        inp = spec.input
        return {
            "name": self.name, "versions": [self.version],
            "platform": triton_platform(self.clf.backend_name),
            "inputs": [{"name": inp.name, "datatype": "FP32", "shape": [-1, inp.channels, inp.height, inp.width]}],
            "outputs": [{"name": spec.output.name, "datatype": "FP32", "shape": [-1, spec.num_classes]}],
            "parameters": {
                "max_batch_size": self.max_batch, "precision": self.clf.precision, "labels": list(spec.classes),
                "image_input": f"or send encoded images (JPEG, PNG, ...) as input '{inp.name}', datatype BYTES, "
                               "shape [N] (binary data: each element a 4-byte little-endian length and the file's "
                               "bytes); the server preprocesses them with the model's spec",
                SPEC_KEY: spec.to_json(),
            },
        }

    async def infer(self, req: InferRequest) -> tuple[dict, list[tuple[dict, bytes | None]]]:
        """A parsed request -> the response header and each output's (metadata, binary data or None)."""
        batch = await self._batch(req.inputs)
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
            return await run_in_threadpool(self._decode, t.data)
        expected = [inp.channels, inp.height, inp.width]
        if len(t.shape) != 4 or t.shape[1:] != expected:
            raise BadRequest(f"input '{inp.name}': expected FP32 shape [N, {', '.join(map(str, expected))}] "
                             f"(got {t.shape})")
        return t.data

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
