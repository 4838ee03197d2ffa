"""The gRPC transport: the protocol's ``inference.GRPCInferenceService`` on grpcio's asyncio server,
over the same Endpoints as the HTTP app (one batcher per model, one error table, one set of metrics).

The service definition is tritonclient's generated code (service_pb2, service_pb2_grpc,
model_config_pb2), not a copy of the .proto: Triton's and KServe's definitions of the protocol's
messages are the same on the wire, so both ecosystems' clients talk to it. Tensors travel as
``raw_input_contents`` / ``raw_output_contents`` (``contents`` is read too); encoded images are a
BYTES input as on HTTP; an output's ``classification`` parameter asks for the top K. Errors are
the gRPC status codes of the error table (tl.runtime.serve.errors), as Triton maps its own except
for an unknown model (see NotFound there).
"""

from __future__ import annotations

import asyncio
import functools

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from tl.runtime.errors import TLError
from tl.runtime.serve.endpoints import Endpoints
from tl.runtime.serve.errors import BadRequest, NotFound, status_of
from tl.runtime.serve.protocol import InferRequest, Requested, tensor_from_binary, tensor_from_values

# How long a stop waits for the calls in flight (the batchers answer them as they drain).
DRAIN_S = 60.0


def _rpc(method):
    """One unary call: any error is answered with its row's gRPC status and message."""
    @functools.wraps(method)
    async def call(self, request, context):
        try:
            return await method(self, request, context)
        except Exception as e:  # noqa: BLE001 - the protocol's status; a bug is INTERNAL, as on HTTP (500)
            status = status_of(e)
            await context.abort(getattr(grpc.StatusCode, status.grpc), status.message)
    return call


class Service(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The protocol's calls, each a translation between protobuf messages and the Endpoints' methods."""

    def __init__(self, endpoints: Endpoints):
        self.endpoints = endpoints

    @_rpc
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.endpoints.live())

    @_rpc
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.endpoints.ready())

    @_rpc
    async def ModelReady(self, request, context):
        try:
            ready = self.endpoints.model_ready(request.name, request.version)
        except NotFound:  # as Triton: a model it does not have is not ready, which is no error
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    @_rpc
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**self.endpoints.server_metadata())

    @_rpc
    async def ModelMetadata(self, request, context):
        meta = self.endpoints.model_metadata(request.name, request.version)
        # The message has no parameters: the image input, labels and spec are in ModelConfig's parameters.
        return json_format.ParseDict({k: v for k, v in meta.items() if k != "parameters"}, pb.ModelMetadataResponse())

    @_rpc
    async def ModelConfig(self, request, context):
        config = json_format.ParseDict(self.endpoints.model_config(request.name, request.version),
                                       model_config_pb2.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    @_rpc
    async def ModelStatistics(self, request, context):
        return json_format.ParseDict(self.endpoints.statistics(request.name, request.version),
                                     pb.ModelStatisticsResponse())

    @_rpc
    async def RepositoryIndex(self, request, context):
        models = self.endpoints.repository_index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**m) for m in models])

    @_rpc
    async def ModelInfer(self, request, context):
        return await self.infer(request)

    async def ModelStreamInfer(self, requests, context):
        """Each request of the stream is answered on it as soon as its batch ran (they may batch
        together); a failed one is answered with its error message, and the stream goes on."""
        lock, running = asyncio.Lock(), set()

        async def one(request):
            try:
                answer = pb.ModelStreamInferResponse(infer_response=await self.infer(request))
            except Exception as e:  # noqa: BLE001 - the stream's way to say one request failed
                answer = pb.ModelStreamInferResponse(error_message=status_of(e).message)
            async with lock:
                await context.write(answer)

        async for request in requests:
            task = asyncio.ensure_future(one(request))
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running)

    async def infer(self, request) -> pb.ModelInferResponse:
        async def decode() -> InferRequest:
            return parse_infer_request(request)

        return await self.endpoints.infer_with(request.model_name, request.model_version, decode, encode_infer_response)


def parse_infer_request(request) -> InferRequest:
    """ModelInferRequest -> InferRequest; every mistake a BadRequest that says which."""
    if not request.inputs:
        raise BadRequest("the request must have at least one input")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input, "
                         "in the inputs' order")
    inputs = []
    for i, t in enumerate(request.inputs):
        shape = list(t.shape)
        if raw:
            inputs.append(tensor_from_binary(t.name, t.datatype, shape, raw[i]))
        elif t.datatype == "BYTES":
            inputs.append(tensor_from_values(t.name, t.datatype, shape, t.contents.bytes_contents))
        else:
            inputs.append(tensor_from_values(t.name, t.datatype, shape, t.contents.fp32_contents))
    outputs = [Requested(o.name, True, _classification(o)) for o in request.outputs]
    return InferRequest(request.id or None, inputs, outputs or None, True)


def _classification(output) -> int:
    """The output's ``classification`` parameter (an integer, as tritonclient and KServe send it), or 0."""
    if "classification" not in output.parameters:
        return 0
    param = output.parameters["classification"]
    value = getattr(param, param.WhichOneof("parameter_choice") or "int64_param")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"output '{output.name}': classification must be a non-negative integer (got {value!r})")
    return value


def encode_infer_response(header: dict, outputs: list[tuple[dict, bytes | None]]) -> pb.ModelInferResponse:
    """The model's answer (each output with its binary data) -> ModelInferResponse with raw_output_contents."""
    response = pb.ModelInferResponse(model_name=header["model_name"], model_version=header["model_version"],
                                     id=header.get("id") or "")
    for meta, blob in outputs:
        response.outputs.add(name=meta["name"], datatype=meta["datatype"], shape=meta["shape"])
        response.raw_output_contents.append(blob)
    return response


class GrpcTransport:
    """The gRPC server: bound on the running event loop (the one the HTTP app and the batchers use),
    started and stopped with the HTTP app's lifespan (its Companion). ``port`` must be a free one."""

    def __init__(self, endpoints: Endpoints, host: str, port: int):
        self.endpoints, self.host, self.port = endpoints, host, port
        self.server: grpc.aio.Server | None = None

    def bind(self) -> int:
        """Bind the port (call on the running loop, once the caller has seen that it is free); the port bound."""
        port = self.port
        self.server = grpc.aio.server(options=[
            ("grpc.so_reuseport", 0),  # never share the port with another server
            # larger: RESOURCE_EXHAUSTED, as HTTP's 413 (grpcio takes a C int)
            ("grpc.max_receive_message_length", min(self.endpoints.max_body, 2**31 - 1)),
            ("grpc.max_send_message_length", -1),
        ])
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Service(self.endpoints), self.server)
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as e:
            raise TLError(f"cannot listen for gRPC on {self.host}:{port} ({e}); pick another --grpc-port") from None
        return self.port

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        """Take no new calls; those in flight are answered as the batchers drain."""
        await self.server.stop(DRAIN_S)
