"""Hosts and transport: a local and an SSH implementation of one small interface."""

from __future__ import annotations

from pipeline.config import HostConfig
from pipeline.hosts.base import CommandResult, Transport

__all__ = ["CommandResult", "Transport", "connect"]


def connect(name: str, host: HostConfig) -> Transport:
    """A connected transport for a host (`name` is how messages call it: a key of the config's hosts)."""
    if host.kind == "local":
        from pipeline.hosts.local import LocalTransport

        return LocalTransport(name, host.workdir)
    from pipeline.hosts.ssh import SshTransport

    return SshTransport.connect(name, host)
