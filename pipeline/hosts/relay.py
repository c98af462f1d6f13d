"""A Unix socket here whose every connection is piped to a fresh run of a command on a host.

This is how a socket on the host is reached without port forwarding, the way the docker CLI's own
`ssh://` hosts do it: the command (`docker system dial-stdio`) connects its stdin and stdout to the
host's socket, and the relay carries the bytes both ways. The socket lives in a private 0700 folder, so
no other user of this machine can use it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

CHUNK = 64 * 1024
ACCEPT_POLL_S = 0.2
MAX_CONNECTIONS = 8  # at once; over SSH each is a session channel, and sshd allows 10 (MaxSessions)
PROBLEMS_KEPT = 5


class Pipe(Protocol):
    """One run of the command: its stdin, stdout and what it said on stderr."""

    def write(self, data: bytes) -> None: ...

    def read(self, size: int) -> bytes:
        """Some bytes of its stdout; b"" once it closed."""

    def end_input(self) -> None: ...

    def close(self) -> str:
        """End the run; returns what it wrote to stderr (the reason when it could not connect)."""


@dataclass
class Relay:
    path: str  # the local socket, for `unix://` URLs
    problems: list[str] = field(default_factory=list)  # the last few runs' stderr, for error messages


@contextlib.contextmanager
def relay_socket(open_pipe: Callable[[], Pipe]) -> Iterator[Relay]:
    """Serve the socket while the block runs; connections still open at its end are cut."""
    folder = tempfile.mkdtemp(prefix="clip-axera-relay-")
    relay = Relay(str(Path(folder) / "socket"))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(relay.path)
    server.listen(MAX_CONNECTIONS)
    server.settimeout(ACCEPT_POLL_S)
    stop = threading.Event()
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not slots.acquire(blocking=False):
                client.close()
                continue
            threading.Thread(target=_serve, args=(client, open_pipe, relay, slots), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield relay
    finally:
        stop.set()
        acceptor.join()
        server.close()
        shutil.rmtree(folder, ignore_errors=True)


def _serve(
    client: socket.socket, open_pipe: Callable[[], Pipe], relay: Relay, slots: threading.BoundedSemaphore
) -> None:
    try:
        pipe = open_pipe()
    except Exception as exc:  # the host went away: this client sees its connection close
        _remember(relay, str(exc))
        client.close()
        slots.release()
        return
    upstream = threading.Thread(target=_client_to_pipe, args=(client, pipe), daemon=True)
    upstream.start()
    try:
        while data := pipe.read(CHUNK):
            client.sendall(data)
        client.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the client left: the run ends below
    finally:
        upstream.join(timeout=5)
        _remember(relay, pipe.close())
        client.close()
        slots.release()


def _client_to_pipe(client: socket.socket, pipe: Pipe) -> None:
    try:
        while data := client.recv(CHUNK):
            pipe.write(data)
        pipe.end_input()
    except OSError:
        pass


def _remember(relay: Relay, problem: str) -> None:
    if problem.strip():
        relay.problems[:] = [*relay.problems, problem.strip()][-PROBLEMS_KEPT:]
