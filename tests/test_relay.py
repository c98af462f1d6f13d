"""pipeline/hosts/relay.py: a local Unix socket whose connections each run a command on the host, piped."""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

from pipeline.hosts.local import LocalTransport


def _exchange(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(path)
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(65536):
            received += chunk
        return received


def test_each_connection_runs_the_command_with_its_bytes_both_ways(tmp_path: Path) -> None:
    transport = LocalTransport("local", str(tmp_path))
    payload = os.urandom(300_000)  # several chunks each way
    with transport.relay("cat") as relay:
        assert _exchange(relay.path, payload) == payload
        assert _exchange(relay.path, b"second") == b"second"
        folder = Path(relay.path).parent
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # no other user of this machine can connect
    assert not folder.exists()


def test_what_a_failing_command_says_is_kept_for_the_error_message(tmp_path: Path) -> None:
    transport = LocalTransport("local", str(tmp_path))
    with transport.relay("echo 'Cannot connect to the Docker daemon' >&2; exit 1") as relay:
        assert _exchange(relay.path, b"GET /_ping") == b""
        deadline = time.monotonic() + 10
        while not relay.problems and time.monotonic() < deadline:
            time.sleep(0.05)
        assert relay.problems == ["Cannot connect to the Docker daemon"]


def test_connections_still_open_when_the_relay_ends_are_cut_and_their_commands_end(tmp_path: Path) -> None:
    """Eight `cat` runs outlived the relay, and a held connection still echoed."""
    transport = LocalTransport("local", str(tmp_path))
    clients = []
    with transport.relay('echo $$ > "pid-$$"; exec cat') as relay:
        for _ in range(3):
            client = socket.socket(socket.AF_UNIX)
            client.settimeout(10)
            client.connect(relay.path)
            client.sendall(b"x")
            assert client.recv(1) == b"x"
            clients.append(client)
        pids = [int(path.read_text()) for path in tmp_path.glob("pid-*")]
    assert len(pids) == 3
    for client in clients:
        with client:
            assert client.recv(1) == b""  # cut: the held connection echoes no more
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
