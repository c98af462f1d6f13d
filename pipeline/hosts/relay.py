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


@dataclass(eq=False)
class _Connection:
    """One client and the run of the command it is piped to."""

    client: socket.socket
    pipe: Pipe
    relay: Relay
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ended: bool = False

    def end(self) -> None:
        """Cut the client and end the command's run, once: from its own thread when either side is done,
        or from the relay's end, whichever comes first."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_RDWR)
        _remember(self.relay, self.pipe.close())
        self.client.close()


@contextlib.contextmanager
def relay_socket(open_pipe: Callable[[], Pipe]) -> Iterator[Relay]:
    """Serve the socket while the block runs; connections still open at its end are cut and their
    commands ended."""
    folder = tempfile.mkdtemp(prefix="clip-axera-relay-")
    relay = Relay(str(Path(folder) / "socket"))
    connections: set[_Connection] = set()
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
            threading.Thread(target=_serve, args=(client, open_pipe, relay, slots, connections), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield relay
    finally:
        stop.set()
        acceptor.join()
        server.close()
        for connection in list(connections):
            connection.end()
        shutil.rmtree(folder, ignore_errors=True)


def _serve(
    client: socket.socket,
    open_pipe: Callable[[], Pipe],
    relay: Relay,
    slots: threading.BoundedSemaphore,
    connections: set[_Connection],
) -> None:
    try:
        pipe = open_pipe()
    except Exception as exc:  # the host went away: this client sees its connection close
        _remember(relay, str(exc))
        client.close()
        slots.release()
        return
    connection = _Connection(client, pipe, relay)
    connections.add(connection)
    upstream = threading.Thread(target=_client_to_pipe, args=(client, pipe), daemon=True)
    upstream.start()
    try:
        while data := pipe.read(CHUNK):
            client.sendall(data)
        client.shutdown(socket.SHUT_WR)
    except (OSError, ValueError):
        pass  # the client left, or the relay ended and cut both: the run ends below
    finally:
        upstream.join(timeout=5)
        connection.end()
        connections.discard(connection)
        slots.release()


def _client_to_pipe(client: socket.socket, pipe: Pipe) -> None:
    try:
        while data := client.recv(CHUNK):
            pipe.write(data)
        pipe.end_input()
    except (OSError, ValueError):  # ValueError: the relay's end closed the pipe under us
        pass


def _remember(relay: Relay, problem: str) -> None:
    if problem.strip():
        relay.problems[:] = [*relay.problems, problem.strip()][-PROBLEMS_KEPT:]
