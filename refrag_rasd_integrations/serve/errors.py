"""The server's typed errors and their HTTP statuses: every refusal is an OpenAI error object with the right
4xx; a 5xx is only ever the server's own fault (its traceback goes to the log, never into the body).

Example:
    >>> status_of(RequestTooLargeError("the body is over 1048576 bytes"))
    (413, 'invalid_request_error', 'request_too_large')
    >>> status_of(AuthenticationError("no API key"))[:2]
    (401, 'authentication_error')
    >>> status_of(KeyError("x"))
    (500, 'server_error', None)
"""

from __future__ import annotations

from refrag_rasd_core.errors import InvalidInputError, RefragRasdError

from ..errors import CollectionNotFoundError, StoreError


class ServeError(RefragRasdError):
    """A refusal with its own HTTP status (``status``, OpenAI ``kind`` and ``code``; ``param`` names the
    request field at fault)."""

    status = 400
    kind = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class LimitExceededError(ServeError, InvalidInputError):
    """A request over one of the server's caps (messages, passages, characters, stop strings, ``k``): 400."""

    code = "limit_exceeded"


class InvalidFilterError(ServeError, InvalidInputError):
    """A ``filter`` that is not a Chroma ``where`` filter (checked before Chroma, or refused by it): 400."""

    code = "invalid_filter"


class InvalidBodyError(ServeError, InvalidInputError):
    """A body that is not a JSON object (bad JSON, nested too deep, a non-finite or overlong number): 400."""

    code = "invalid_json"


class RequestTooLargeError(ServeError, InvalidInputError):
    """A body over ``max_body_bytes`` (from ``Content-Length`` or while reading): 413."""

    status = 413
    code = "request_too_large"


class UnsupportedMediaTypeError(ServeError, InvalidInputError):
    """A POST whose ``Content-Type`` is not ``application/json``: 415."""

    status = 415
    code = "unsupported_media_type"


class AuthenticationError(ServeError):
    """No API key, or not one of the server's (``Authorization: Bearer KEY``): 401."""

    status = 401
    kind = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(ServeError):
    """A valid key asking for a collection it may not read: 403."""

    status = 403
    kind = "permission_error"
    code = "collection_not_allowed"


class RequestTimeoutError(ServeError, TimeoutError):
    """A request that ran past its time budget (``request_timeout``): 504; the engine is released."""

    status = 504
    kind = "timeout_error"
    code = "request_timeout"


class ServerBusyError(ServeError):
    """More requests waiting for the engine than ``max_queued_requests``: 503 (retry later)."""

    status = 503
    kind = "service_unavailable"
    code = "server_busy"


def status_of(exc: BaseException) -> tuple[int, str, str | None]:
    """HTTP status, OpenAI error type and code of an exception raised while serving a request."""
    from .chat_service import ModelNotServedError

    if isinstance(exc, ServeError):
        return exc.status, exc.kind, exc.code
    if isinstance(exc, (ModelNotServedError, CollectionNotFoundError)):
        return 404, "not_found_error", "not_found"
    if isinstance(exc, InvalidInputError):
        return 400, "invalid_request_error", None
    if isinstance(exc, StoreError):
        return 503, "service_unavailable", "store_unavailable"
    return 500, "server_error", None


__all__ = ["AuthenticationError", "InvalidBodyError", "InvalidFilterError", "LimitExceededError",
           "PermissionDeniedError", "RequestTimeoutError", "RequestTooLargeError", "ServeError", "ServerBusyError",
           "UnsupportedMediaTypeError", "status_of"]
