"""HTTP Basic auth as A1111's --api-auth: one check, used by the routes and, before any body is read,
by the request limits (an unauthenticated client must not make the server hold its 30 MB body)."""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials

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
    scheme, _, token = (authorization or b"").decode("latin-1").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        username, _, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        return False
    return credentials_match(credentials, username, password)


_BASIC = HTTPBasic(auto_error=False)  # module level: FastAPI resolves the annotation below from this module's globals


def authenticator(credentials: dict[str, str]) -> Any:
    """A route dependency answering A1111's 401 unless the request carries one of the credentials."""

    def check(given: Annotated[HTTPBasicCredentials | None, Depends(_BASIC)]) -> None:
        if given is None or not credentials_match(credentials, given.username, given.password):
            raise HTTPException(401, REFUSED, headers={"WWW-Authenticate": "Basic"})

    return check
