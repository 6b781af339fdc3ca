"""The HTTP surface of a server replica, as a FastAPI app over a :class:`ChatService`:

* ``POST /v1/chat/completions``: OpenAI chat completions (``stream: true`` gives server-sent events ending in
  ``data: [DONE]``; ``stream_options.include_usage`` adds the usage chunk), plus the retrieval-augmented
  fields (``collection``, ``k``, ``filter``, ``passages``, ``context``, ``expand``, ``policy``, ``method``);
  the answer's sources and speed come back under ``refrag_rasd``;
* ``GET /v1/models``; ``GET /health`` (open, minimal: status and model).

A request is checked in this order, each refusal an OpenAI error object: the API key (401; 403 for a
collection the key may not read), ``Content-Type: application/json`` (415), the body's size (413, before
parsing), its JSON (400: nesting, non-finite numbers), the fields and the server's caps (400, naming the
field), the model (404), the collection (404), the prompt against the model's window (400, before the
engine), the queue (503) and the time budget (504, or an error event once a stream has started). A 5xx is
only the server's own fault; its traceback goes to the log. CORS is off unless ``cors_origins`` is set;
``/docs`` and ``/openapi.json`` are off unless ``docs``. A valid ``X-Request-Id`` header (1-64 of
``[A-Za-z0-9._-]``) is echoed as the completion's id (``chatcmpl-<id>``); another gets a fresh id.

The same app runs in each Ray Serve replica (:mod:`refrag_rasd_integrations.serve.deployment`), under
uvicorn (``refrag-rasd serve --no-ray``) and, in tests, in-process.

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
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from ..generation import run_in_thread
from .auth import KeyRing
from .body import check_json_type, parse_json, read_body
from .chat_service import ChatService, new_request_id
from .errors import ServeError, status_of
from .gate import Budget
from .openai_api import ChatCompletionRequest, error_body

log = logging.getLogger("refrag_rasd_integrations.serve")


def error_response(exc: BaseException, headers: dict[str, str] | None = None) -> JSONResponse:
    """The OpenAI error object of ``exc`` with its status; a server fault is logged, not described."""
    status, kind, code = status_of(exc)
    if status >= 500 and not isinstance(exc, ServeError):  # the server's fault: the details go to the log
        log.error("request failed", exc_info=exc)
        message = ("the Chroma store is unavailable (see the server log); retry later" if code
                   else "internal server error (see the server log)")
    else:
        message = str(exc)
    param = getattr(exc, "param", None)
    return JSONResponse(error_body(message, kind, code, param), status_code=status, headers=headers)


def _validation_response(errors: list[Any], headers: dict[str, str] | None = None) -> JSONResponse:
    first = errors[0] if errors else {}
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
    return JSONResponse(error_body(f"invalid request: {where}: {first.get('msg', 'invalid')}", param=where or None),
                        status_code=400, headers=headers)


def make_api(service: ChatService) -> FastAPI:
    """The FastAPI app answering for ``service`` (its config's limits, keys, CORS and docs)."""
    cfg = service.config
    docs = bool(cfg.docs)
    api = FastAPI(title="refrag-rasd", description="OpenAI-compatible chat completions with REFRAG + RASD",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    keys = KeyRing(cfg.api_keys)
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        api.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "x-request-id"],
                           expose_headers=["x-request-id"], allow_credentials=False)

    @api.exception_handler(RequestValidationError)
    async def _bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(list(exc.errors()))

    @api.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @api.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    def authorize(request: Request) -> frozenset[str] | None:
        return keys.check(request.headers.get("authorization")) if keys else None

    @api.get("/health")
    def health() -> dict[str, Any]:
        return service.health()

    @api.get("/v1/models", response_model=None)
    def models(request: Request) -> Any:
        try:
            authorize(request)
        except ServeError as exc:
            return error_response(exc)
        return service.models()

    ref = {"$ref": "#/components/schemas/ChatCompletionRequest"}
    body_schema = {"content": {"application/json": {"schema": ref}}, "required": True}

    @api.post("/v1/chat/completions", response_model=None, openapi_extra={"requestBody": body_schema})
    async def chat_completions(request: Request) -> Any:
        budget = Budget(cfg.request_timeout)
        rid = new_request_id(request.headers.get("x-request-id"))
        headers = {"x-request-id": rid}
        try:
            allowed = authorize(request)
            check_json_type(request.headers.get("content-type"))
            raw = await read_body(request.stream(), request.headers.get("content-length"), cfg.max_body_bytes)
            req = service.parse(parse_json(raw, cfg.max_json_depth))
        except ValidationError as exc:
            return _validation_response(list(exc.errors()), headers)
        except Exception as exc:
            return error_response(exc, headers)
        if not req.stream:
            try:
                out = await _in_thread(lambda: service.complete(req, rid, allowed=allowed, budget=budget))
            except Exception as exc:
                return error_response(exc, headers)
            return JSONResponse(out, headers=headers)
        try:  # resolve before the first byte, so bad input gets its status code
            events = await _in_thread(lambda: service.events(req, rid, allowed=allowed, budget=budget))
        except Exception as exc:
            return error_response(exc, headers)
        return StreamingResponse(run_in_thread(lambda: events), media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache"})

    def openapi() -> dict[str, Any]:  # the body's schema, though the endpoint reads the body itself
        if api.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=api.title, version="1", description=api.description, routes=api.routes)
            model = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(model.pop("$defs", {}))
            components["ChatCompletionRequest"] = model
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    return api


async def _in_thread(fn: Any) -> Any:
    """Run a blocking call off the event loop (the engine holds the thread while it decodes)."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


__all__ = ["error_response", "make_api", "status_of"]
