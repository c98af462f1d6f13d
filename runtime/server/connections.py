"""Connections as uvicorn holds them, made safe against clients that hold them without asking anything.

uvicorn (0.29 to today) waits for a request head without any deadline, counts idle keep-alive connections
against --limit-concurrency, answers over the cap with a plain-text 503, and closes a connection whose
body it did not read, so the client's kernel may get a reset before the client reads the answer.
This protocol (uvicorn's own h11 one, which every uvicorn install has) adds:
- a deadline for each request head: a client that sent part of one and then nothing gets a 408 and is
  closed after `head_timeout_s` (slowloris holds no slot);
- at the cap, a new connection closes the connection idle longest (between requests, or still sending
  a head, for at least IDLE_GRACE_S) rather than be refused: only requests in progress hold the cap;
- over the cap anyway (every connection busy), A1111's JSON 503;
- a lingering close when an answer goes out before the request body arrived (413, 401, 503): our side
  is half-closed and what still arrives is read and dropped for up to LINGER_S, so the answer is read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from runtime.server.limits import Receive, Scope, Send, answer_error

LINGER_S = 2.0
# A client sends its head right after connecting: a connection younger than this is not idle, it is new.
IDLE_GRACE_S = 0.25
HEAD_TIMEOUT_ANSWER = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 256  # open connections; past it, the one idle longest is closed, or a 503
    head_timeout_s: float = 5.0  # a request head must arrive within this


def uvicorn_config(app: Any, host: str, port: int, limits: ConnectionLimits, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's Config with the guarded protocol: used by the server command and by the tests alike."""
    protocol = type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=protocol,
        timeout_keep_alive=30,
        limit_concurrency=None,
    )


class GuardedH11Protocol(H11Protocol):
    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = self._app_within_cap
        self._head_deadline: asyncio.TimerHandle | None = None
        self.idle_since = self.loop.time()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_LingeringTransport(transport, self))
        self._make_room()
        self._await_head()

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:
            return  # read and dropped: the answer is out, the connection is closing
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._await_head()  # bytes of the next head, or none yet: the deadline runs from its start
        else:
            self._stop_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.idle_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    @property
    def idle(self) -> bool:
        return (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing()

    def _open_connections(self) -> list[GuardedH11Protocol]:
        return [c for c in self.connections if not c.transport.is_closing()]

    def _make_room(self) -> None:
        """Close as many connections, idle longest first, as the cap is exceeded by."""
        open_now = self._open_connections()
        excess = len(open_now) - self.limits.max_connections
        if excess <= 0:
            return
        settled = self.loop.time() - IDLE_GRACE_S
        idle = sorted(
            (c for c in open_now if c is not self and c.idle and c.idle_since <= settled), key=lambda c: c.idle_since
        )
        if idle:
            self.logger.info("connection cap reached: closing %d connection(s) idle longest", min(excess, len(idle)))
        for connection in idle[:excess]:
            connection.transport.close()

    def _await_head(self) -> None:
        if (
            self._head_deadline is None
            and self.conn.their_state is h11.IDLE
            and (self.cycle is None or self.cycle.response_complete)
        ):
            self._head_deadline = self.loop.call_later(self.limits.head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self.conn.trailing_data[0]:  # part of a head arrived: say why we close
                self.transport.write(HEAD_TIMEOUT_ANSWER)
            self.transport.close()

    async def _app_within_cap(self, scope: Scope, receive: Receive, send: Send) -> None:
        busy = len(self._open_connections())
        if busy > self.limits.max_connections:
            await answer_error(send, 503, f"Server busy: {busy} connections open (--max-connections); retry shortly")
            return
        await self.config.loaded_app(scope, receive, send)


class _LingeringTransport:
    """The connection's transport, whose close() lingers while the client may still be sending a body."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedH11Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        transport = self._transport
        if self.lingering or transport.is_closing():
            return
        if self._protocol.conn.their_state is not h11.SEND_BODY or not transport.can_write_eof():
            transport.close()
            return
        self.lingering = True
        transport.write_eof()
        transport.resume_reading()
        self._protocol.loop.call_later(LINGER_S, transport.close)
