"""Request limits: caps on body size and on the time a body may take to arrive (checked as bytes arrive,
not after), and the admission gate that bounds how many requests wait for the one encoder (503 when
full, so a client never hangs in a queue)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import HTTPException

from runtime.server.errors import error_body

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestBodyLimits:
    """ASGI middleware: 413 for a body over `max_bytes` (from Content-Length, or once a streamed body
    passes it) and 408 for a body still arriving after `timeout_s` (a slow client holds no worker)."""

    def __init__(self, app: App, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _answer(send, 413, "RequestTooLarge", self._too_large())
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        received = 0
        refused = False  # after our answer, whatever the app sends is dropped
        app_started = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                status, error, detail = 408, "RequestTimeout", self._too_slow()
            else:
                received += len(message.get("body", b""))
                if received <= self.max_bytes:
                    return message
                status, error, detail = 413, "RequestTooLarge", self._too_large()
            if not app_started:
                refused = True
                await _answer(send, status, error, detail)
            return {"type": "http.disconnect"}  # the app stops reading, as if the client left

        async def guarded_send(message: Message) -> None:
            nonlocal app_started
            if refused:
                return
            app_started = app_started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    def _too_large(self) -> str:
        return f"Request body too large: the limit is {self.max_bytes:,} bytes (--max-body-mb)"

    def _too_slow(self) -> str:
        return f"Request body not received within {self.timeout_s:g} s (--body-timeout)"


async def _answer(send: Send, status: int, error: str, detail: str) -> None:
    body = json.dumps(error_body(error, detail, f"{status}: {detail}")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AdmissionGate:
    """At most `capacity` requests inside (one encoding, the rest queued); the next one gets a 503."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.inside = 0
        self.served = 0
        self.refused = 0

    @contextmanager
    def admitted(self) -> Iterator[None]:
        # Entered on the event loop's one thread: the check and the increment cannot interleave.
        if self.inside >= self.capacity:
            self.refused += 1
            raise HTTPException(503, f"Server busy: {self.inside} requests in progress or queued; retry shortly")
        self.inside += 1
        try:
            yield
        finally:
            self.inside -= 1
            self.served += 1
