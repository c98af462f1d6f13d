"""What differs when the build host's engine is Docker Desktop (a Mac's): its VM's memory, the folders it
shares with containers, and who may reach it.

- Memory: the engine reports the VM's MemTotal, a little under the Settings -> Resources -> Memory slider
  (an "8 GB" VM shows ~7.7 GiB: the VM's kernel keeps a share), so the preflight allows that shortfall
  and names the slider, not MemTotal.
- File sharing: a bind mount of a folder outside Settings -> Resources -> File sharing fails at container
  creation with "mounts denied". The defaults are /Users, /Volumes, /private, /tmp and /var/folders; the
  user's own list is in Docker Desktop's settings file (`filesharingDirectories`; settings-store.json
  since 4.35, settings.json before).
- Who: Docker Desktop runs while its user is logged in to the Mac's desktop, and serves that user only:
  an SSH login as another account, or before anyone logged in, finds no engine.
"""

from __future__ import annotations

import json
import math

from pipeline.errors import HostError
from pipeline.hosts.base import Transport, quote

# The share of the slider's value the VM reports as MemTotal, at least (8 GB -> 7.7 GiB: 0.96).
MEMORY_REPORTED_SHARE = 0.9
DEFAULT_SHARED = ("/Users", "/Volumes", "/private", "/tmp", "/var/folders")
SETTINGS_FILES = (
    "~/Library/Group Containers/group.com.docker/settings-store.json",
    "~/Library/Group Containers/group.com.docker/settings.json",
)
MEMORY_FIX = "Docker Desktop -> Settings -> Resources -> Memory: {need:g} GB or more, then Apply & restart"
FILE_SHARING_FIX = "Docker Desktop -> Settings -> Resources -> File sharing"


def check_memory(transport: Transport, memory_gb: float, need_gb: float, desktop: bool) -> None:
    """Refuse an engine with less memory than a build needs; Docker Desktop's reported shortfall allowed."""
    if memory_gb >= need_gb * (MEMORY_REPORTED_SHARE if desktop else 1.0):
        return
    if desktop:
        raise HostError(
            transport.name,
            f"Docker Desktop's VM has about {math.ceil(memory_gb):g} GB of memory, a Pulsar2 build needs about "
            f"{need_gb:g} GB",
            hint=MEMORY_FIX.format(need=need_gb) + " (or lower stages.compile.pulsar2.min_memory_gb)",
        )
    raise HostError(
        transport.name,
        f"Docker's engine has {memory_gb:.1f} GB of memory, a Pulsar2 build needs about {need_gb:g} GB",
        hint="give the engine more memory (or lower stages.compile.pulsar2.min_memory_gb)",
    )


def shared_folders(transport: Transport) -> tuple[str, ...]:
    """The folders Docker Desktop shares with containers: its settings file's list, else the defaults."""
    for settings in SETTINGS_FILES:
        result = transport.run(f"cat {quote(transport.expand(settings))} 2>/dev/null")
        if not result.ok:
            continue
        try:
            data = json.loads(result.stdout)
        except json.JSONDecodeError:
            continue
        folders = data.get("filesharingDirectories", data.get("FilesharingDirectories"))
        if isinstance(folders, list) and all(isinstance(f, str) for f in folders):
            return tuple(folders)
    return DEFAULT_SHARED


def check_shared(transport: Transport, folder: str) -> None:
    """The build's workdir must be shared with containers, or every build fails with "mounts denied"."""
    real = transport.run(f"cd {quote(folder)} && pwd -P").stdout.strip() or folder
    shared = shared_folders(transport)
    if any(_inside(path, share) for path in (folder, real) for share in shared):
        return
    raise HostError(
        transport.name,
        f"Docker Desktop does not share {folder} with containers (it shares {', '.join(shared)})",
        hint=f"add it in {FILE_SHARING_FIX}, or set hosts.{transport.name}.workdir to a folder under /Users",
    )


def unreachable_hint(transport: Transport) -> str:
    """What to do when no engine answers: on a Mac, the causes Docker Desktop has."""
    if transport.run("uname -s").stdout.strip() != "Darwin":
        return f"start Docker on the build host, or name its socket in hosts.{transport.name}.docker_socket"
    user = transport.run("id -un").stdout.strip() or "the SSH user"
    return (
        "is Docker Desktop running? It runs only while its user is logged in to the Mac's desktop, and serves "
        f"that user only: log in at the Mac as {user} (the SSH user) and start Docker Desktop, or set "
        f"hosts.{transport.name}.user to the account that runs it (or name its socket in "
        f"hosts.{transport.name}.docker_socket)"
    )


def _inside(path: str, folder: str) -> bool:
    folder = folder.rstrip("/") or "/"
    return path == folder or path.startswith(folder + "/") or folder == "/"
