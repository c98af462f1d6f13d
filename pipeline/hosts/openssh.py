"""Bulk uploads through the system's OpenSSH client, hashing both ends while the bytes flow.

Paramiko's SFTP runs its cipher in Python-driven packets and reaches under half of scp's throughput;
the `ssh` binary streams at scp's speed. The file goes to `tee` on the host, which hands the same bytes
to sha256sum, while this side hashes what it sends: one read on each end, verified end to end. Host keys
are checked exactly as the Fabric connection checks them (known_hosts, no silent trust).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

from pipeline.config import HostConfig
from pipeline.hosts.base import SHA_TOOL, Progress, quote

CHUNK = 1024 * 1024
# AES-GCM first: with AES instructions (x86 AES-NI, the Pi 5's ARMv8 crypto) it is the fastest of
# OpenSSH's AEAD ciphers; chacha20-poly1305 (OpenSSH's default) stays as the fallback.
PREFERRED_CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com"


class StreamFailed(Exception):
    """The ssh binary could not stream the file (connection, auth, the remote command)."""


def available() -> bool:
    return shutil.which("ssh") is not None


def ssh_command(host: HostConfig) -> list[str]:
    known = ["~/.ssh/known_hosts"] + ([host.known_hosts] if host.known_hosts else [])
    command = [
        "ssh",
        "-o", "BatchMode=yes",
        "-o", f"StrictHostKeyChecking={'accept-new' if host.trust_new_host_key else 'yes'}",
        "-o", "UserKnownHostsFile=" + " ".join(os.path.expanduser(k) for k in known),
        "-o", f"ConnectTimeout={int(host.connect_timeout)}",
        "-o", "Compression=no",
        "-o", f"Ciphers={PREFERRED_CIPHERS}",
    ]  # fmt: skip
    if host.port:
        command += ["-p", str(host.port)]
    if host.user:
        command += ["-l", host.user]
    if host.key:
        command += ["-i", os.path.expanduser(host.key), "-o", "IdentitiesOnly=yes"]
    return [*command, "--", host.address or ""]


def stream_put(host: HostConfig, local: Path, remote: str, progress: Progress | None = None) -> tuple[str, str]:
    """Send `local` to `remote`; returns (sha256 sent, sha256 the host computed of what it received).
    The host also checks the written file's size, so a short write (a full disk) cannot pass."""
    size = local.stat().st_size
    remote_command = (
        f"H={SHA_TOOL}; tee {quote(remote)} | $H && [ \"$(wc -c < {quote(remote)} | tr -d ' ')\" = {size} ]"
    )
    process = subprocess.Popen(
        [*ssh_command(host), remote_command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    output: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda: output.__setitem__("out", process.stdout.read()), daemon=True),
        threading.Thread(target=lambda: output.__setitem__("err", process.stderr.read()), daemon=True),
    ]
    for reader in readers:
        reader.start()
    digest, done = hashlib.sha256(), 0
    try:
        with local.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                process.stdin.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, size)
        process.stdin.close()
    except BrokenPipeError:
        pass  # the remote side ended early; its exit status and stderr say why
    except BaseException:  # Ctrl+C: the ssh client must not outlive us, half a file is never used
        process.kill()
        process.wait()
        raise
    code = process.wait()
    for reader in readers:
        reader.join()
    if code != 0:
        reason = output.get("err", b"").decode(errors="replace").strip().splitlines()
        raise StreamFailed(f"exit {code}" + (f": {reason[-1]}" if reason else ""))
    remote_digest = output.get("out", b"").decode().split(" ", 1)[0].strip()
    return digest.hexdigest(), remote_digest
