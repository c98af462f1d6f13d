"""Hosts and transport: a local and an SSH implementation of one small interface."""

from __future__ import annotations

from pipeline.config import PipelineConfig
from pipeline.hosts.base import CommandResult, Transport

__all__ = ["CommandResult", "Transport", "connect"]


def connect(config: PipelineConfig, name: str) -> Transport:
    """A connected transport for the named host of the config."""
    host = config.host(name)
    if host.kind == "local":
        from pipeline.hosts.local import LocalTransport

        return LocalTransport(name, host.workdir)
    from pipeline.hosts.ssh import SshTransport

    return SshTransport.connect(name, host)
