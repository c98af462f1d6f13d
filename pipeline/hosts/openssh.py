"""Bulk uploads through the system's OpenSSH client, hashing both ends while the bytes flow.

Paramiko's SFTP runs its cipher in Python-driven packets and reaches under half of scp's throughput;
the `ssh` binary streams at scp's speed. The file goes to `tee` on the host, which hands the same bytes
to sha256, while this side hashes the file alongside: verified end to end at one read per end. Host keys
are checked exactly as the Fabric connection checks them (known_hosts, no silent trust).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import BinaryIO

from common.hashing import sha256_file
from pipeline.config import HostConfig
from pipeline.errors import PipelineError
from pipeline.hosts.base import SHA_TOOL, Progress, over_ssh, quote

PROGRESS_INTERVAL_S = 0.2
# Below this, a new ssh process (a key exchange, ~0.3 s) costs more than SFTP's slower stream saves.
STREAM_MIN_BYTES = 16 * 1024 * 1024
# AES-GCM first: with AES instructions (x86 AES-NI, the Pi 5's ARMv8 crypto) it is the fastest of
# OpenSSH's AEAD ciphers; chacha20-poly1305 (OpenSSH's default) stays as the fallback.
PREFERRED_CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com"


class StreamFailed(PipelineError):
    """The ssh binary could not stream the file (connection, auth, the remote command); the transport
    answers it by falling back to SFTP, so a user sees it only as a warning."""


def available() -> bool:
    return shutil.which("ssh") is not None


def ssh_command(host: HostConfig) -> list[str]:
    known = ["~/.ssh/known_hosts"] + ([host.known_hosts] if host.known_hosts else [])
    command = [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        f"StrictHostKeyChecking={'accept-new' if host.trust_new_host_key else 'yes'}",
        "-o",
        "UserKnownHostsFile=" + " ".join(os.path.expanduser(k) for k in known),
        "-o",
        f"ConnectTimeout={int(host.connect_timeout)}",
        "-o",
        "Compression=no",
        "-o",
        f"Ciphers={PREFERRED_CIPHERS}",
    ]
    if host.port:
        command += ["-p", str(host.port)]
    if host.user:
        command += ["-l", host.user]
    if host.key:
        command += ["-i", os.path.expanduser(host.key), "-o", "IdentitiesOnly=yes"]
    return [*command, "--", host.address or ""]


def stream_put(host: HostConfig, local: Path, remote: str, progress: Progress | None = None) -> tuple[str, str]:
    """Send `local` to `remote`; returns (sha256 sent, sha256 the host computed of what it received).
    The host also checks the written file's size, so a short write (a full disk) cannot pass.

    ssh reads the file itself (no copy through Python); this side hashes it in a thread meanwhile and
    follows ssh's progress through the file offset the two share."""
    size = local.stat().st_size
    remote_command = (
        f"H={SHA_TOOL}; tee {quote(remote)} | $H && [ \"$(wc -c < {quote(remote)} | tr -d ' ')\" = {size} ]"
    )
    hashed: dict[str, str] = {}
    hasher = threading.Thread(target=lambda: hashed.__setitem__("sha256", sha256_file(local)), daemon=True)
    hasher.start()
    with local.open("rb") as source:
        process = subprocess.Popen(
            [*ssh_command(host), over_ssh(remote_command)], stdin=source, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            out, err = _communicate(process, source, size, progress)
        except BaseException:  # Ctrl+C: the ssh client must not outlive us; half a file is never used
            process.kill()
            process.wait()
            raise
    hasher.join()
    if process.returncode != 0:
        reason = err.decode(errors="replace").strip().splitlines()
        raise StreamFailed(f"exit {process.returncode}" + (f": {reason[-1]}" if reason else ""))
    return hashed["sha256"], out.decode().split(" ", 1)[0].strip()


def _communicate(
    process: subprocess.Popen, source: BinaryIO, size: int, progress: Progress | None
) -> tuple[bytes, bytes]:
    output: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda: output.__setitem__("out", process.stdout.read()), daemon=True),  # type: ignore[union-attr]
        threading.Thread(target=lambda: output.__setitem__("err", process.stderr.read()), daemon=True),  # type: ignore[union-attr]
    ]
    for reader in readers:
        reader.start()
    while True:
        try:
            process.wait(timeout=PROGRESS_INTERVAL_S)
            break
        except subprocess.TimeoutExpired:
            if progress:
                progress(min(os.lseek(source.fileno(), 0, os.SEEK_CUR), size), size)
    for reader in readers:
        reader.join()
    if progress:
        progress(size, size)
    return output.get("out", b""), output.get("err", b"")
