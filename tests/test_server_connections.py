"""Clients that hold connections or memory without asking anything: slow heads, idle sockets, bodies
sent without credentials or all at once. Real uvicorn on loopback, raw sockets for what httpx will not do."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from urllib.parse import urlsplit

import httpx

from runtime.server.connections import IDLE_GRACE_S, ConnectionLimits

INTERROGATE = "/sdapi/v1/interrogate"


def _address(client: httpx.Client) -> tuple[str, int]:
    url = urlsplit(str(client.base_url))
    return url.hostname or "127.0.0.1", url.port or 80


def _head(length: int, auth: tuple[str, str] | None = None) -> bytes:
    lines = [
        f"POST {INTERROGATE} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        "Connection: close",
    ]
    if auth:
        lines.append("Authorization: Basic " + base64.b64encode(":".join(auth).encode()).decode())
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@contextmanager
def requests_in_progress(client: httpx.Client, count: int, length: int) -> Iterator[list[socket.socket]]:
    """`count` requests whose heads the server has read and whose bodies it awaits: each asks for
    `100 Continue`, which uvicorn sends once the app starts reading the body."""
    head = _head(length).replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
    with raw_connections(client, count, head) as sockets:
        for sock in sockets:
            assert sock.recv(100).startswith(b"HTTP/1.1 100 ")
        yield sockets


@contextmanager
def raw_connections(client: httpx.Client, count: int, first_bytes: bytes) -> Iterator[list[socket.socket]]:
    """`count` sockets to the server, each having sent `first_bytes` and then nothing."""
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection(_address(client), timeout=10))
            if first_bytes:
                sock.sendall(first_bytes)
            sockets.append(sock)
        yield sockets


def _read_answer(sock: socket.socket) -> tuple[int, dict]:
    """The status and JSON body of the one answer on `sock`, read until the server closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else {}


def _wait_until(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_a_body_without_credentials_is_refused_before_it_is_read(serve) -> None:
    """40 unauthenticated 30 MB bodies once took the server to 1.4 GB before their 401s."""
    client = serve(credentials={"alice": "s3cret"})
    with raw_connections(client, 1, _head(30_000_000)) as (sock,):
        status, answer = _read_answer(sock)  # not one body byte sent: the answer cannot wait for it
    assert status == 401 and answer["detail"] == "Incorrect username or password"
    with raw_connections(client, 1, _head(30_000_000, auth=("alice", "wrong"))) as (sock,):
        assert _read_answer(sock)[0] == 401
    assert client.get("/healthz").status_code == 200


def test_bodies_in_flight_past_the_budget_get_503_and_the_rest_are_served(serve) -> None:
    """100 concurrent 30 MB bodies once took the server to 7.8 GB: bodies held at once are now bounded."""
    client = serve(max_body_bytes=2_000_000, max_bodies_bytes=3_000_000)
    body = json.dumps({"image": "A" * 1_400_000}).encode()
    with requests_in_progress(client, 2, len(body)) as holding:  # 2.8 MB reserved
        with raw_connections(client, 1, _head(len(body))) as (third,):
            status, answer = _read_answer(third)
        assert status == 503 and "bodies in flight" in answer["detail"]
        for sock in holding:
            sock.sendall(body)
            assert _read_answer(sock)[0] == 500  # served: "A" * n is no image
    assert client.post(INTERROGATE, content=body, headers={"content-type": "application/json"}).status_code == 500
    assert client.get("/healthz").status_code == 200


def test_slow_request_heads_time_out_and_idle_sockets_do_not_lock_anyone_out(serve) -> None:
    """260 sockets sending part of a head and then nothing once locked every client out for minutes."""
    head_timeout = 3.0
    client = serve(limits=ConnectionLimits(max_connections=20, head_timeout_s=head_timeout))
    partial = b"POST /sdapi/v1/interrogate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    with raw_connections(client, 30, partial) as slow, raw_connections(client, 10, b"") as silent:
        opened = time.monotonic()
        served = 0
        while served < 5:  # each on a new connection; idle ones give way once past IDLE_GRACE_S
            assert time.monotonic() - opened < head_timeout, "not served before the slow sockets timed out"
            served += client.get("/healthz", headers={"connection": "close"}).status_code == 200
            time.sleep(IDLE_GRACE_S / 5)
        answers = [_status_or_closed(sock) for sock in slow]  # closed to make room, or 408 at the deadline
        assert set(answers) <= {408, None} and 408 in answers, answers
        assert all(sock.recv(1) == b"" for sock in silent)  # closed: nothing was ever asked
        assert time.monotonic() - opened < head_timeout + 3
    assert client.get("/healthz").status_code == 200


def _status_or_closed(sock: socket.socket) -> int | None:
    """The answer's status, or None for a connection closed without one."""
    try:
        return _read_answer(sock)[0]
    except (ValueError, IndexError, ConnectionResetError):
        return None


def test_over_the_connection_cap_every_client_reads_a_503(serve) -> None:
    """With every connection busy, the rest once got resets, not answers (their bodies unread at close)."""
    client = serve(limits=ConnectionLimits(max_connections=4), body_timeout_s=30)
    body = json.dumps({"image": "A" * 1_000_000}).encode()
    with requests_in_progress(client, 4, len(body)) as busy:

        def over_the_cap(_: int) -> tuple[int, dict]:
            with socket.create_connection(_address(client), timeout=10) as sock:
                sock.sendall(_head(len(body)))
                sock.sendall(body)  # the answer comes first; the rest of the body is read and dropped
                return _read_answer(sock)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(over_the_cap, range(16)))
        assert all(status == 503 and "connections open" in answer["detail"] for status, answer in answers), [
            a for a in answers if a[0] != 503
        ]
        for sock in busy:
            sock.sendall(body)
            assert _read_answer(sock)[0] == 500  # still served
    assert client.get("/healthz").status_code == 200
