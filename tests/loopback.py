"""Loopback helpers for tests: a free port, and a real uvicorn serving an app in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from runtime.server.connections import ConnectionLimits, uvicorn_config

START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(app: object, limits: ConnectionLimits | None = None) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 with uvicorn, configured as the server command does, until the block ends;
    yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, limits or ConnectionLimits(), "warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)


@contextmanager
def app_clients() -> Iterator[Callable[..., httpx.Client]]:
    """start(interrogator, limits=ConnectionLimits, **ServerSettings) -> an httpx client of a fresh app on
    a real uvicorn; every server and client started in the block is closed at its end."""
    from runtime.server.app import ServerSettings, create_app

    stack: list = []

    def start(interrogator: object, limits: ConnectionLimits | None = None, **settings: object) -> httpx.Client:
        context = serving(create_app(interrogator, ServerSettings(**settings)), limits)  # type: ignore[arg-type]
        client = httpx.Client(base_url=context.__enter__(), timeout=60)
        stack.append((context, client))
        return client

    try:
        yield start
    finally:
        for context, client in reversed(stack):
            client.close()
            context.__exit__(None, None, None)
