"""Every error the inference protocol answers, and its status on each transport, in one place.

Each class is one row of the status table: ``http`` is the HTTP status the REST endpoint answers
(with the body ``{"error": message}``), ``grpc`` the name of the ``grpc.StatusCode`` a gRPC
endpoint answers, so both transports tell a client the same thing. Any other exception is a
bug: 500 / INTERNAL, message included.
"""

from __future__ import annotations

from typing import NamedTuple


class ServeError(Exception):
    """An error the protocol answers; subclasses say how."""

    http = 500
    grpc = "INTERNAL"


class BadRequest(ServeError):
    """A malformed request, or one the model cannot take."""

    http, grpc = 400, "INVALID_ARGUMENT"


class NotFound(ServeError):
    """An unknown model or version. Triton answers UNAVAILABLE; gRPC clients retry that code (the
    KServe SDK's retry policy does), and a name that does not exist is no reason to retry."""

    http, grpc = 404, "NOT_FOUND"


class TooLarge(ServeError):
    """A request body over the server's limit."""

    http, grpc = 413, "RESOURCE_EXHAUSTED"


class Unavailable(ServeError):
    """The server is not ready, or is shutting down: retry later or elsewhere."""

    http, grpc = 503, "UNAVAILABLE"


class QueueFull(Unavailable):
    """The model's queue already holds as many requests as it may."""


class NonFiniteOutput(ServeError):
    """The model answered NaN or infinite logits: its fault, not the request's, and never sent as scores."""


class Status(NamedTuple):
    http: int
    grpc: str
    message: str


def status_of(e: BaseException) -> Status:
    """What any transport answers for ``e``."""
    row = e if isinstance(e, ServeError) else ServeError
    return Status(row.http, row.grpc, str(e))
