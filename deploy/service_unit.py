"""The server as a systemd service on a device: started at boot, restarted when it fails, logging to the
journal (`journalctl --user -u clip-axera-serve`).

A user unit (~/.config/systemd/user) where the device user's systemd manager answers, with lingering
enabled so it starts at boot without a login (`loginctl enable-linger`); otherwise a system unit running
as the SSH user, when that user is root or has passwordless sudo. Which one was installed is recorded in
the workdir (`serve.unit`), so `--status`, `--stop` and `--uninstall` from any controller act on it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import HostError
from pipeline.hosts import Transport
from pipeline.hosts.base import quote

UNIT = "clip-axera-serve.service"
SCOPE_FILE = "serve.unit"  # in the workdir: "user" or "system"
USER_UNITS = "~/.config/systemd/user"
SYSTEM_UNITS = "/etc/systemd/system"
RESTART_SEC = 5


@dataclass(frozen=True)
class Manager:
    """The systemd manager a unit is installed into: the device user's own, or the system's."""

    scope: str  # "user" or "system"
    sudo: bool = False

    @property
    def systemctl(self) -> str:
        if self.scope == "user":
            return "systemctl --user"
        return "sudo -n systemctl" if self.sudo else "systemctl"

    def unit_path(self, transport: Transport) -> str:
        folder = transport.expand(USER_UNITS) if self.scope == "user" else SYSTEM_UNITS
        return f"{folder}/{UNIT}"

    def run(self, transport: Transport, verb: str, *, what: str) -> str:
        return transport.check(f"{self.systemctl} {verb}", what=what).stdout.strip()

    def main_pid(self, transport: Transport) -> int | None:
        """The running service's pid (systemd's MainPID), None when it does not run."""
        pid = transport.run(f"{self.systemctl} show -p MainPID --value {UNIT}").stdout.strip()
        return int(pid) if pid.isdigit() and pid != "0" else None


def unit_text(app: str, python: str, module: str, args: list[str], user: str | None) -> str:
    """The unit file: `python -m module args` in `app`, restarted on failure, logging to the journal."""
    command = " ".join(systemd_quote(part) for part in [python, "-m", module, *args])
    service_user = f"User={user}\n" if user else ""
    return (
        "[Unit]\n"
        "Description=clip-axera: CLIP interrogation on the NPU (A1111's /sdapi/v1/interrogate)\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n\n"
        "[Service]\n"
        "Type=simple\n"
        f"{service_user}"
        f"WorkingDirectory={app.replace('%', '%%')}\n"  # the rest of the line, unquoted; specifiers expand
        f"ExecStart={command}\n"
        "Restart=on-failure\n"
        f"RestartSec={RESTART_SEC}\n\n"
        "[Install]\n"
        f"WantedBy={'multi-user.target' if user else 'default.target'}\n"
    )


def systemd_quote(value: str) -> str:
    """One word of a unit file's command line: systemd splits on spaces, reads C escapes inside double
    quotes, and expands `%` specifiers and `$` variables (doubled to stay literal)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"' if escaped != value or not value or any(c.isspace() for c in value) else value


def find_manager(transport: Transport) -> Manager:
    """The user's systemd manager when it answers, else the system's for root or passwordless sudo."""
    if not transport.run("test -d /run/systemd/system").ok:
        raise HostError(
            transport.name,
            "systemd does not run on this host, so the server cannot be installed as a service",
            hint="start it in the background instead: invoke serve --host " + transport.name,
        )
    if transport.run("systemctl --user show-environment >/dev/null 2>&1").ok:
        return Manager("user")
    if transport.run('[ "$(id -u)" = 0 ]').ok:
        return Manager("system")
    if transport.run("sudo -n true 2>/dev/null").ok:
        return Manager("system", sudo=True)
    raise HostError(
        transport.name,
        "neither the user's systemd manager (systemctl --user) nor passwordless sudo is available",
        hint="log in on the device once as this user, or allow it `sudo`; then run --install again",
    )


def install(transport: Transport, manager: Manager, text: str) -> None:
    """Write the unit, enable and start it; a user unit also gets lingering (start at boot)."""
    target = manager.unit_path(transport)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / UNIT
        local.write_text(text, encoding="utf-8")
        staged = transport.path(f".{UNIT}")
        transport.put(local, staged)
    folder = target.rsplit("/", 1)[0]
    sudo = "sudo -n " if manager.sudo else ""
    transport.check(
        f"{sudo}mkdir -p {quote(folder)} && {sudo}install -m 0644 {quote(staged)} {quote(target)}"
        f" && rm -f {quote(staged)}",
        what=f"writing {target}",
    )
    manager.run(transport, "daemon-reload", what="reloading systemd's units")
    manager.run(transport, f"enable --now {UNIT}", what=f"enabling and starting {UNIT}")
    if manager.scope == "user":
        _enable_linger(transport)
    transport.check(f"echo {manager.scope} > {quote(transport.path(SCOPE_FILE))}", what="recording the unit")


def installed(transport: Transport) -> Manager | None:
    """The manager the unit was installed into, None when it was not (the server runs in the background)."""
    scope = transport.run(f"cat {quote(transport.path(SCOPE_FILE))} 2>/dev/null").stdout.strip()
    if scope not in ("user", "system"):
        return None
    sudo = scope == "system" and not transport.run('[ "$(id -u)" = 0 ]').ok
    return Manager(scope, sudo=sudo)


def uninstall(transport: Transport, manager: Manager) -> None:
    """Stop and disable the service, remove its unit file (ours by name) and the record."""
    manager.run(transport, f"disable --now {UNIT}", what=f"stopping and disabling {UNIT}")
    sudo = "sudo -n " if manager.sudo else ""
    transport.check(f"{sudo}rm -f {quote(manager.unit_path(transport))}", what="removing the unit file")
    manager.run(transport, "daemon-reload", what="reloading systemd's units")
    transport.run(f"rm -f {quote(transport.path(SCOPE_FILE))}")


def _enable_linger(transport: Transport) -> None:
    """A user's services start at boot only with lingering on; a user may set it for itself (polkit's
    default), else sudo can."""
    if transport.run('loginctl enable-linger "$(id -un)" 2>/dev/null').ok:
        return
    if transport.run('sudo -n loginctl enable-linger "$(id -un)" 2>/dev/null').ok:
        return
    user = transport.run("id -un").stdout.strip()
    raise HostError(
        transport.name,
        f"the service is installed and running, but will not start at boot: lingering is off for {user}",
        hint=f"on the device: sudo loginctl enable-linger {user}",
    )
