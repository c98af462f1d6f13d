"""Checksummed, atomic file transfer on top of any transport.

Uploads skip files whose remote sha256 already matches, write to a temporary name, verify the sha256
there and only then rename into place: a dropped connection or a corrupted copy never leaves a
half-written file under the real name. Downloads do the same on this side.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from common.hashing import sha256_file
from pipeline.errors import ConnectionLost, HostError
from pipeline.hosts.base import Progress, Transport, quote

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class TransferSummary:
    sent: tuple[str, ...]
    skipped: tuple[str, ...]
    bytes_sent: int
    digests: dict[str, str]  # remote path -> sha256 of what is there now


def upload(transport: Transport, files: dict[Path, str], progress: Progress | None = None) -> TransferSummary:
    """Put each local file at its remote path unless the remote copy already has the same sha256.

    Files absent on the host are not hashed beforehand: the transport hashes both ends as it sends.
    A broken connection is retried (the host's `retries`, reconnecting with backoff) from the start of
    the file; what lands is verified by sha256 either way."""
    remote_digests = _reconnecting(transport, lambda: transport.sha256(files.values()))
    sent, skipped, total, digests = [], [], 0, {}
    for local, remote in files.items():
        if remote in remote_digests:
            local_digest = sha256_file(local)
            if remote_digests[remote] == local_digest:
                skipped.append(remote)
                digests[remote] = local_digest
                continue
        digests[remote] = _reconnecting(transport, partial(_send, transport, local, remote, progress))
        sent.append(remote)
        total += local.stat().st_size
    return TransferSummary(tuple(sent), tuple(skipped), total, digests)


def _send(transport: Transport, local: Path, remote: str, progress: Progress | None) -> str:
    """One attempt: to a temporary name (leftovers of broken attempts removed first), verified, renamed."""
    temporary = f"{remote}.tmp-{uuid.uuid4().hex[:8]}"
    parent = remote.rsplit("/", 1)[0] or "/"
    transport.check(f"mkdir -p {quote(parent)} && rm -f {quote(remote + '.tmp-')}*", what=f"preparing {parent}")
    try:
        local_digest, got = transport.put_verified(local, temporary, progress)
        if got != local_digest:
            raise HostError(
                transport.name,
                f"upload of {local.name} arrived corrupted (sha256 {got}, expected {local_digest})",
                hint="the file was not put in place; run again, and check the host's disk and network",
            )
        transport.check(f"mv -f {quote(temporary)} {quote(remote)}", what=f"moving {local.name} into place")
    finally:
        with contextlib.suppress(ConnectionLost):  # then the next attempt (or run) removes it
            transport.run(f"rm -f {quote(temporary)}")
    return local_digest


def download(transport: Transport, remote: str, local: Path, progress: Progress | None = None) -> str:
    """Get a remote file to `local` (via a temp file), verified against the remote sha256; a broken
    connection is retried as uploads are."""
    expected = _reconnecting(transport, lambda: transport.sha256([remote])).get(remote)
    if expected is None:
        raise HostError(transport.name, f"{remote} does not exist on the host")
    return _reconnecting(transport, partial(_receive, transport, remote, local, expected, progress))


def _receive(transport: Transport, remote: str, local: Path, expected: str, progress: Progress | None) -> str:
    temporary = local.with_name(f".tmp-{local.name}-{uuid.uuid4().hex[:8]}")
    try:
        transport.get(remote, temporary, progress)
        got = sha256_file(temporary)
        if got != expected:
            raise HostError(
                transport.name,
                f"download of {remote} arrived corrupted (sha256 {got}, expected {expected})",
                hint="run again; the previous local copy was kept",
            )
        os.replace(temporary, local)
    finally:
        temporary.unlink(missing_ok=True)
    return expected


def _reconnecting(transport: Transport, attempt: Callable[[], T]) -> T:
    tries_left = transport.retries
    while True:
        try:
            return attempt()
        except ConnectionLost as exc:
            if not tries_left:
                raise
            log.warning("%s; reconnecting (%d more tries)", exc, tries_left)
            tries_left -= 1
            transport.reconnect()
