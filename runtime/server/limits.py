"""Request limits: caps on body size and on the time a body may take to arrive (checked as bytes arrive,
not after), and the admission gate that bounds how many requests wait for the one encoder (503 when
full, so a client never hangs in a queue)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from runtime.errors import ServerBusy
from runtime.server.auth import REFUSED, header_matches
from runtime.server.errors import error_body

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyBudget:
    """The bytes of request bodies held at once, across all requests: a hundred clients sending 30 MB
    bodies at once would otherwise take gigabytes before any of them reached the admission gate.
    Used on the event loop's one thread only, so taking and giving back cannot interleave."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self.refused = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.capacity:
            self.refused += 1
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


class RequestBodyLimits:
    """ASGI middleware, before any body byte is read: 401 for a body sent without valid credentials (when
    auth is on), 413 for a body over `max_bytes` (from Content-Length, or once a streamed body passes
    it), 503 when the bodies in flight would pass the budget, and 408 for a body still arriving after
    `timeout_s` (a slow client holds no worker)."""

    def __init__(
        self, app: App, max_bytes: int, timeout_s: float, budget: BodyBudget, credentials: dict[str, str]
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.budget = budget
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        declared_size = int(declared) if declared.isdigit() else 0
        sends_body = declared_size or b"transfer-encoding" in headers
        if self.credentials and sends_body and not header_matches(self.credentials, headers.get(b"authorization")):
            await answer_error(send, 401, REFUSED, [(b"www-authenticate", b"Basic")])
            return
        if declared_size > self.max_bytes:
            await answer_error(send, 413, self._too_large())
            return
        held = declared_size
        if not self.budget.take(held):
            await answer_error(send, 503, self._over_budget())
            return
        try:
            await self._serve(scope, receive, send, streamed=not declared_size)
        finally:
            self.budget.give_back(held)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, streamed: bool) -> None:
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
                status, detail = 408, self._too_slow()
            else:
                chunk = len(message.get("body", b""))
                received += chunk
                if received > self.max_bytes:
                    status, detail = 413, self._too_large()
                elif streamed and not self.budget.take(chunk):
                    status, detail = 503, self._over_budget()
                else:
                    return message
            if not app_started:
                refused = True
                await answer_error(send, status, detail)
            return {"type": "http.disconnect"}  # the app stops reading, as if the client left

        async def guarded_send(message: Message) -> None:
            nonlocal app_started
            if refused:
                return
            app_started = app_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        finally:
            if streamed:
                self.budget.give_back(min(received, self.max_bytes))

    def _too_large(self) -> str:
        return f"Request body too large: the limit is {self.max_bytes:,} bytes (--max-body-mb)"

    def _too_slow(self) -> str:
        return f"Request body not received within {self.timeout_s:g} s (--body-timeout)"

    def _over_budget(self) -> str:
        return (
            f"Server busy: request bodies in flight already hold {self.budget.held:,} of "
            f"{self.budget.capacity:,} bytes (--max-bodies-mb); retry shortly"
        )


async def answer_error(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """An error answer in A1111's shape, sent from below the app (the connection is closed after it)."""
    body = json.dumps(error_body("HTTPException", detail, f"{status}: {detail}")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


DRAIN_POLL_S = 0.01  # how often an unload looks whether the requests it waits for have ended


class AdmissionGate:
    """At most `capacity` requests inside (one encoding, the rest queued); the next one gets a 503."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.inside = 0
        self.served = 0
        self.refused = 0
        self._admitted = 0  # requests admitted so far: each one's number
        self._running: set[int] = set()

    @contextmanager
    def admitted(self) -> Iterator[None]:
        # Entered on the event loop's one thread: the check and the increment cannot interleave.
        if self.inside >= self.capacity:
            self.refused += 1
            raise ServerBusy(f"Server busy: {self.inside} requests in progress or queued; retry shortly")
        self.inside += 1
        self._admitted += 1
        number = self._admitted
        self._running.add(number)
        try:
            yield
        finally:
            self._running.discard(number)
            self.inside -= 1
            self.served += 1

    async def finish_running(self, timeout: float) -> tuple[int, bool]:
        """Wait (at most `timeout` s) until every request inside now has ended; requests that arrive
        meanwhile are not waited for. (How many were waited for, whether all ended in time.)"""
        waiting = set(self._running)
        deadline = time.monotonic() + timeout
        while waiting & self._running and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        return len(waiting), not waiting & self._running
