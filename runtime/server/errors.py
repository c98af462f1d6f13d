"""Error answers in the shape A1111's middleware sends: error, detail, body, errors.

Refusals are fastapi's HTTPException, as in A1111, so `error` reads "HTTPException" and `errors` reads
"<status>: <detail>" for clients that parse them.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("runtime.server")


def error_body(error: str, detail: Any, errors: Any) -> dict[str, Any]:
    # `body` stays empty: echoing a request back could return megabytes of base64.
    return {"error": error, "detail": detail, "body": "", "errors": errors}


def install_error_handlers(app: FastAPI) -> None:
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
