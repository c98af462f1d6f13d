"""HTTP Basic auth as A1111's --api-auth: one check, used by the routes and, before any body is read,
by the request limits (an unauthenticated client must not make the server hold its 30 MB body)."""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.requests import HTTPConnection

REFUSED = "Incorrect username or password"  # A1111's words, also for a missing header


def credentials_match(credentials: dict[str, str], username: str, password: str) -> bool:
    """Compared against every user in constant time, so timing reveals neither names nor passwords."""
    ok = False
    for user, expected in credentials.items():
        user_ok = secrets.compare_digest(username.encode(), user.encode())
        password_ok = secrets.compare_digest(password.encode(), expected.encode())
        ok |= user_ok & password_ok
    return ok


def header_matches(credentials: dict[str, str], authorization: bytes | None) -> bool:
    """An `Authorization: Basic ...` header's value checked against the credentials."""
    given = parse_basic((authorization or b"").decode("latin-1"))
    return given is not None and credentials_match(credentials, given.username, given.password)


def parse_basic(authorization: str | None) -> HTTPBasicCredentials | None:
    """user and password of a Basic header. httpx, curl and browsers send UTF-8; requests sends latin-1
    (and refuses other characters): UTF-8 first, then latin-1, so a non-ASCII password works from either."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    username, separator, password = text.partition(":")
    return HTTPBasicCredentials(username=username, password=password) if separator else None


class _Basic(HTTPBasic):
    """FastAPI's HTTPBasic (it declares the scheme in the OpenAPI document) reading the header as
    `parse_basic` does: FastAPI's own decodes it as ASCII, so a non-ASCII password never matched."""

    async def __call__(self, request: HTTPConnection) -> HTTPBasicCredentials | None:  # type: ignore[override]
        return parse_basic(request.headers.get("Authorization"))


_BASIC = _Basic(auto_error=False)  # module level: FastAPI resolves the annotation below from this module's globals


def authenticator(credentials: dict[str, str]) -> Any:
    """A route dependency answering A1111's 401 unless the request carries one of the credentials."""

    def check(given: Annotated[HTTPBasicCredentials | None, Depends(_BASIC)]) -> None:
        if given is None or not credentials_match(credentials, given.username, given.password):
            raise HTTPException(401, REFUSED, headers={"WWW-Authenticate": "Basic"})

    return check
