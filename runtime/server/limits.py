"""Request limits: a cap on body size (checked as bytes arrive, not after), and the admission gate that
bounds how many requests wait for the one encoder (503 when full, so a client never hangs in a queue)."""

from __future__ import annotations

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


class BodySizeLimit:
    """ASGI middleware: 413 for a Content-Length over the cap, or once a streamed body passes it."""

    def __init__(self, app: App, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        refused = False  # after our 413, whatever the app sends is dropped
        app_started = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                if not refused and not app_started:
                    refused = True
                    await self._refuse(send)
                return {"type": "http.disconnect"}  # the app stops reading, as if the client left
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal app_started
            if refused:
                return
            app_started = app_started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, guarded_send)

    async def _refuse(self, send: Send) -> None:
        detail = f"Request body too large: the limit is {self.max_bytes:,} bytes (--max-body-mb)"
        body = json.dumps(error_body("RequestTooLarge", detail, f"413: {detail}")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
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
