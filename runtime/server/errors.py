"""Error answers in the shape A1111's middleware sends: error, detail, body, errors; and the one place
where the runtime's errors become HTTP statuses.

The runtime raises its own family (runtime/errors.py) and knows nothing of HTTP. A1111 refuses with
fastapi's HTTPException, so every refusal reads `error: "HTTPException"` and `errors: "<status>: <detail>"`
for clients that parse them.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import UserError
from runtime.classify import QuestionRefused
from runtime.errors import ImageTooLarge, InvalidImage, NpuBusy, OptionRefused, ServerBusy
from runtime.prompt_modes import PromptError

log = logging.getLogger("runtime.server")


QUOTED_CHARS = 100  # of a client's value quoted back in an error: a 10 MB `mode` must not come back twice


def quoted(value: str) -> str:
    """A client's value for an error message: its repr, cut after QUOTED_CHARS characters."""
    if len(value) <= QUOTED_CHARS:
        return repr(value)
    return f"{value[:QUOTED_CHARS]!r}... ({len(value):,} characters)"


def error_body(error: str, detail: Any, errors: Any) -> dict[str, Any]:
    # `body` stays empty: echoing a request back could return megabytes of base64.
    return {"error": error, "detail": detail, "body": "", "errors": errors}


# The first class an error is an instance of gives its status (subclasses before their bases).
STATUSES: tuple[tuple[type[UserError], int], ...] = (
    (ImageTooLarge, 413),
    (InvalidImage, 500),  # A1111 answers an undecodable image or refused URL with 500
    (OptionRefused, 422),
    (ServerBusy, 503),
    (NpuBusy, 503),
    (PromptError, 501),  # a prompt mode the served vocabulary cannot answer (no clip-interrogator lists)
    (QuestionRefused, 422),  # a classify question over the service's bounds
)


def http_status(exc: UserError) -> int:
    """The status A1111 answers this error with (500 for one it has no word for)."""
    return next((status for kind, status in STATUSES if isinstance(exc, kind)), 500)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UserError)
    async def refused(request: Request, exc: UserError) -> JSONResponse:
        status, detail = http_status(exc), getattr(exc, "detail", str(exc))
        body = error_body("HTTPException", detail, f"{status}: {detail}")
        return JSONResponse(jsonable_encoder(body), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = error_body(type(exc).__name__, exc.detail, str(exc))
        return JSONResponse(jsonable_encoder(body), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse(jsonable_encoder(error_body(type(exc).__name__, detail, detail)), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("API error: %s %s", request.method, request.url.path)
        return JSONResponse(error_body(type(exc).__name__, "", str(exc)), status_code=500)
