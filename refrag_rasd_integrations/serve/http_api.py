"""The HTTP surface of a server replica, as a FastAPI app over a :class:`ChatService`:

* ``POST /v1/chat/completions``: OpenAI chat completions (``stream: true`` gives server-sent events ending in
  ``data: [DONE]``; ``stream_options.include_usage`` adds the usage chunk), plus the retrieval-augmented
  fields (``collection``, ``k``, ``filter``, ``passages``, ``context``, ``expand``, ``policy``, ``method``);
  the answer's sources and speed come back under ``refrag_rasd``;
* ``GET /v1/models``, ``GET /health``.

Errors are OpenAI error objects: 400 bad input (a context longer than the model allows, a store built for
another model, an unsupported field), 404 an unknown model or collection, 503 the Chroma server unreachable,
500 anything else. An ``X-Request-Id`` header is echoed as the completion's id (``chatcmpl-<id>``).

The same app runs in each Ray Serve replica (:mod:`refrag_rasd_integrations.serve.deployment`) and, in
tests, in-process.

Example:
    >>> from starlette.testclient import TestClient
    >>> from refrag_rasd_integrations.serve.chat_service import ChatService, ServeConfig
    >>> client = TestClient(make_api(ChatService(ServeConfig(k=0, max_tokens=4),
    ...                                          engine=engine)))  # doctest: +REAL_MODEL
    >>> client.post("/v1/chat/completions",
    ...             json={"messages": [{"role": "user", "content": "Hi"}]}).status_code  # doctest: +REAL_MODEL
    200
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from refrag_rasd_core.errors import InvalidInputError

from ..errors import CollectionNotFoundError, StoreError
from ..generation import run_in_thread
from .chat_service import ChatService, ModelNotServedError, new_request_id
from .openai_api import error_body


def status_of(exc: BaseException) -> tuple[int, str]:
    """HTTP status and OpenAI error type of an exception raised while serving a request."""
    if isinstance(exc, (ModelNotServedError, CollectionNotFoundError)):
        return 404, "not_found_error"
    if isinstance(exc, InvalidInputError):
        return 400, "invalid_request_error"
    if isinstance(exc, StoreError):
        return 503, "service_unavailable"
    return 500, "server_error"


def error_response(exc: BaseException) -> JSONResponse:
    status, kind = status_of(exc)
    code = {404: "not_found", 503: "store_unavailable"}.get(status)
    return JSONResponse(error_body(str(exc), kind, code), status_code=status)


def make_api(service: ChatService) -> FastAPI:
    """The FastAPI app answering for ``service``."""
    api = FastAPI(title="refrag-rasd", description="OpenAI-compatible chat completions with REFRAG + RASD")

    @api.exception_handler(RequestValidationError)
    async def _bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse(error_body(f"invalid request: {where}: {first.get('msg', exc)}",
                                       param=where or None), status_code=400)

    @api.get("/health")
    def health() -> dict[str, Any]:
        return service.health()

    @api.get("/v1/models")
    def models() -> dict[str, Any]:
        return service.models()

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Any:
        rid = new_request_id(request.headers.get("x-request-id"))
        try:
            req = service.parse(await request.json())
        except ValueError as exc:  # JSON or pydantic validation
            if isinstance(exc, InvalidInputError):
                return error_response(exc)
            return JSONResponse(error_body(f"invalid request: {exc}"), status_code=400)
        headers = {"x-request-id": rid}
        if not req.stream:
            try:
                out = await _in_thread(lambda: service.complete(req, rid))
            except Exception as exc:
                return error_response(exc)
            return JSONResponse(out, headers=headers)
        try:  # resolve before the first byte, so bad input gets its status code
            events = await _in_thread(lambda: service.events(req, rid))
        except Exception as exc:
            return error_response(exc)
        return StreamingResponse(run_in_thread(lambda: events), media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache"})

    return api


async def _in_thread(fn: Any) -> Any:
    """Run a blocking call off the event loop (the engine holds the thread while it decodes)."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


__all__ = ["error_response", "make_api", "status_of"]
