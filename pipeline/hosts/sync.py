"""Checksummed, atomic file transfer on top of any transport.

Uploads skip files whose remote sha256 already matches, write to a temporary name, verify the sha256
there and only then rename into place: a dropped connection or a corrupted copy never leaves a
half-written file under the real name. Downloads do the same on this side.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import HostError
from pipeline.files import sha256_file
from pipeline.hosts.base import Progress, Transport, quote

# sha256sum on Linux, shasum on macOS; prints "<sha>  <path>" or nothing for a missing file.
_SHA_COMMAND = (
    'for f in {files}; do if [ -f "$f" ]; then '
    'if command -v sha256sum >/dev/null 2>&1; then sha256sum "$f"; else shasum -a 256 "$f"; fi; fi; done'
)


@dataclass(frozen=True)
class TransferSummary:
    sent: tuple[str, ...]
    skipped: tuple[str, ...]
    bytes_sent: int
    digests: dict[str, str]  # remote path -> sha256 of what is there now


def remote_sha256(transport: Transport, paths: Iterable[str]) -> dict[str, str]:
    """sha256 of each existing remote file, in one command; missing files are absent from the result."""
    paths = list(paths)
    if not paths:
        return {}
    command = _SHA_COMMAND.format(files=" ".join(quote(p) for p in paths))
    result = transport.check(command, what="computing checksums")
    digests = {}
    for line in result.stdout.splitlines():
        digest, _, path = line.partition("  ")
        if len(digest) == 64:
            digests[path.lstrip("*")] = digest
    return digests


def upload(transport: Transport, files: dict[Path, str], progress: Progress | None = None) -> TransferSummary:
    """Put each local file at its remote path unless the remote copy already has the same sha256."""
    local_digests = {local: sha256_file(local) for local in files}
    remote_digests = remote_sha256(transport, files.values())
    sent, skipped, total = [], [], 0
    for local, remote in files.items():
        if remote_digests.get(remote) == local_digests[local]:
            skipped.append(remote)
            continue
        temporary = f"{remote}.tmp-{uuid.uuid4().hex[:8]}"
        parent = remote.rsplit("/", 1)[0] or "/"
        transport.check(f"mkdir -p {quote(parent)}", what=f"creating {parent}")
        try:
            transport.put(local, temporary, progress)
            got = remote_sha256(transport, [temporary]).get(temporary)
            if got != local_digests[local]:
                raise HostError(
                    transport.name,
                    f"upload of {local.name} arrived corrupted (sha256 {got or 'missing'}, expected "
                    f"{local_digests[local]})",
                    hint="the file was not put in place; run again, and check the host's disk and network",
                )
            transport.check(f"mv -f {quote(temporary)} {quote(remote)}", what=f"moving {local.name} into place")
        finally:
            transport.run(f"rm -f {quote(temporary)}")
        sent.append(remote)
        total += local.stat().st_size
    digests = {remote: local_digests[local] for local, remote in files.items()}
    return TransferSummary(tuple(sent), tuple(skipped), total, digests)


def download(transport: Transport, remote: str, local: Path, progress: Progress | None = None) -> str:
    """Get a remote file to `local` (via a temp file), verified against the remote sha256."""
    expected = remote_sha256(transport, [remote]).get(remote)
    if expected is None:
        raise HostError(transport.name, f"{remote} does not exist on the host")
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
