"""`invoke serve`: the interrogation server here in the foreground, or on a host in the background.

On a host (`--host pi`) the server runs from the device's runtime/ and virtualenv (device_app.py), with
its log in `serve.log`, its pid in `serve.pid` and its port in `serve.port` under the host's workdir, so
`--status` and `--stop` find it later from any controller. With several devices (`--host all`, or a comma
list) every one is started, stopped or asked at once, and `nginx_config` writes the load balancer in front.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from deploy import service_unit
from deploy.background import Background, put_private
from deploy.device_config import NamedDevice
from deploy.device_runtime import install_runtime, venv_python
from deploy.fleet import DeviceOutcome, failures, on_each
from deploy.load_balancer import Backend, nginx_config
from pipeline.errors import HostError, PipelineError
from pipeline.hosts import Transport, connect
from pipeline.hosts.base import quote
from pipeline.hosts.ssh import resolved_address
from pipeline.terminal import console
from runtime.manifest import CURRENT_SET
from runtime.preprocess import Fidelity
from runtime.server.schemas import Health
from stages.config import PipelineConfig

DEFAULT_PORT = 7860  # A1111's
START_TIMEOUT_S = 90
SERVER = Background("serve", "runtime.server")  # serve.log, serve.pid in the host's workdir
PORT_FILE, AUTH_FILE = "serve.port", "serve.auth"


class ServeAction(Enum):
    """What `invoke serve` does: one of its flags, or start when none is given."""

    START = "start"
    STOP = "stop"
    STATUS = "status"
    PRINT_NGINX = "print-nginx"
    INSTALL = "install"
    UNINSTALL = "uninstall"

    @classmethod
    def of(cls, **flags: bool) -> ServeAction:
        """The action the flags name (`print_nginx=True` -> PRINT_NGINX); two at once is a user error."""
        chosen = [cls(name.replace("_", "-")) for name, given in flags.items() if given]
        if len(chosen) > 1:
            raise PipelineError(f"{' and '.join('--' + a.value for a in chosen)} cannot be combined: pick one")
        return chosen[0] if chosen else cls.START


@dataclass(frozen=True)
class ServeRequest:
    """What `invoke serve` was asked; None: the device's own setting (`for_device`)."""

    port: int | None = None
    listen: bool = False
    api_auth: str | None = None  # user:password[,...]; never printed
    extra: tuple[str, ...] = ()  # further runtime.server flags
    npu_lock: str | None = None  # a lock file on the machine that serves
    unload_after: float | None = None
    fidelity: Fidelity | None = None

    def for_device(self, device: NamedDevice) -> ServeRequest:
        """The request with what it leaves open taken from the device's section."""
        return replace(
            self,
            port=self.port or device.port or DEFAULT_PORT,
            npu_lock=self.npu_lock or device.npu_lock,
            unload_after=self.unload_after if self.unload_after is not None else device.unload_after,
            fidelity=self.fidelity or device.fidelity,
        )


def server_argv(models: str, request: ServeRequest, auth_file: str | None = None) -> list[str]:
    argv = ["--models", models, "--port", str(request.port or DEFAULT_PORT), *request.extra]
    if request.listen:
        argv.append("--listen")
    if request.npu_lock:
        argv += ["--npu-lock", request.npu_lock]
    if request.unload_after is not None:
        argv += ["--unload-after", f"{request.unload_after:g}"]
    if request.fidelity:
        argv += ["--fidelity", request.fidelity.value]
    if auth_file:
        argv += ["--api-auth-file", auth_file]
    return argv


def serve_here(models: Path, request: ServeRequest) -> int:
    """Run the server in this process until Ctrl+C (the password reaches it through the environment)."""
    from runtime.server.__main__ import AUTH_ENV, main

    if request.api_auth:
        os.environ[AUTH_ENV] = request.api_auth
    return main(server_argv(str(models), request))


def start_on_devices(config: PipelineConfig, request: ServeRequest, as_service: bool = False) -> None:
    """Start the server on every device of the config, at once (`as_service`: installed as a systemd
    service first); fails naming each device that did not."""
    outcomes = on_each(config.fleet(), lambda device: _start(config, device, request, as_service))
    _raise_failures("install" if as_service else "start", outcomes)


def uninstall_on_devices(config: PipelineConfig) -> None:
    _raise_failures("uninstall", on_each(config.fleet(), lambda device: _uninstall(config, device)))


def stop_on_devices(config: PipelineConfig) -> None:
    _raise_failures("stop", on_each(config.fleet(), lambda device: _stop(config, device)))


def status_on_devices(config: PipelineConfig) -> bool:
    """Print each device's server state; True when every one is healthy."""
    outcomes = on_each(config.fleet(), lambda device: _status(config, device))
    for outcome in outcomes:
        if outcome.error:
            console.print(f"{outcome.device}: {outcome.error}", markup=False)
    return all(outcome.result for outcome in outcomes)


def nginx_for(config: PipelineConfig, listen: str) -> str:
    """The load balancer's config for the config's devices, each at its host's address (an ssh_config
    alias resolved as SSH resolves it) and its port."""
    backends = []
    for device in config.fleet():
        host = config.host(device.host)
        address = resolved_address(host) if host.kind == "ssh" else "127.0.0.1"
        backends.append(Backend(device.name, address, device.port or DEFAULT_PORT))
    return nginx_config(backends, listen)


def _raise_failures(what: str, outcomes: list[DeviceOutcome[None]]) -> None:
    failed = failures(outcomes)
    if failed:
        count = f"{len(failed)} of {len(outcomes)} devices"
        raise PipelineError(f"could not {what} the server on {count}: " + "; ".join(failed))


def _start(config: PipelineConfig, device: NamedDevice, request: ServeRequest, as_service: bool = False) -> None:
    """The server in the background (or, `as_service`, as a systemd service), reported only once its own
    process answers /healthz."""
    host, request = config.host(device.host), request.for_device(device)
    with connect(device.host, host) as transport:
        if request.npu_lock:
            request = replace(request, npu_lock=transport.path(request.npu_lock))
        models = transport.path(device.models_dir)
        if not transport.run(f"test -f {quote(models)}/{CURRENT_SET}/export.json").ok:
            raise PipelineError(
                f"no fetched models in {models} on {device.name}", hint=f"run `invoke fetch --host {device.name}` first"
            )
        manager = service_unit.find_manager(transport) if as_service else service_unit.installed(transport)
        if _running_pid(transport, manager):
            raise PipelineError(
                f"the server already runs on {device.name}",
                hint=f"`invoke serve --host {device.name} --stop` first, or --status",
            )
        app, python = install_runtime(transport, host.python)
        auth_file = None
        if request.api_auth:
            auth_file = _put_auth(transport, request.api_auth)
        else:
            transport.run(f"rm -f {quote(transport.path(AUTH_FILE))}")  # no stale credentials
        argv = server_argv(models, request, auth_file)
        transport.check(f"echo {request.port} > {quote(transport.path(PORT_FILE))}", what="recording the port")
        if manager is None:
            pid, log = SERVER.start(transport, app, argv), SERVER.log(transport)
        else:
            _install_service(transport, manager, app, argv)
            pid, log = manager.main_pid(transport), f"journalctl {_journal(manager)}"
        health = _wait_healthy(transport, python, request.port or DEFAULT_PORT, pid) if pid else None
        if health is None:
            tail = SERVER.log_tail(transport) if manager is None else _journal_tail(transport, manager)
            _stop_server(transport, manager)
            raise HostError(device.name, "the server did not come up", hint=f"its log ({log}) ends:", tail=tail)
    where = "0.0.0.0" if request.listen else "127.0.0.1"
    service = f"; systemd unit {service_unit.UNIT} ({manager.scope}), starts at boot" if manager else ""
    console.print(
        f"serving on {device.name} at {where}:{request.port} ({health.backend}, {health.labels:,} labels); "
        f"log: {log}{service}"
    )


def _install_service(transport: Transport, manager: service_unit.Manager, app: str, argv: list[str]) -> None:
    """Our background server gives way to the service, which is then written, enabled and started."""
    SERVER.stop(transport)
    user = transport.run("id -un").stdout.strip() if manager.scope == "system" else None
    text = service_unit.unit_text(app, venv_python(transport), SERVER.module, argv, user)
    service_unit.install(transport, manager, text)


def _journal(manager: service_unit.Manager) -> str:
    return f"{'--user ' if manager.scope == 'user' else ''}-u {service_unit.UNIT}"


def _journal_tail(transport: Transport, manager: service_unit.Manager) -> list[str]:
    return transport.run(f"journalctl {_journal(manager)} -n 20 --no-pager").stdout.strip().splitlines()


def _running_pid(transport: Transport, manager: service_unit.Manager | None) -> int | None:
    """Our server's pid: the service's MainPID when it is installed, else the background one's."""
    return manager.main_pid(transport) if manager else SERVER.running_pid(transport)


def _stop_server(transport: Transport, manager: service_unit.Manager | None) -> int | None:
    """Stop our server (the service stays enabled: it starts again at boot); the pid it stopped."""
    if manager is None:
        return SERVER.stop(transport)
    pid = manager.main_pid(transport)
    manager.run(transport, f"stop {service_unit.UNIT}", what=f"stopping {service_unit.UNIT}")
    return pid


def _stop(config: PipelineConfig, device: NamedDevice) -> None:
    with connect(device.host, config.host(device.host)) as transport:
        manager = service_unit.installed(transport)
        pid = _stop_server(transport, manager)
    boot = f" ({service_unit.UNIT} stays enabled: --uninstall to remove it)" if manager else ""
    console.print(
        f"stopped the server on {device.name} (pid {pid}){boot}" if pid else f"no server runs on {device.name}"
    )


def _uninstall(config: PipelineConfig, device: NamedDevice) -> None:
    with connect(device.host, config.host(device.host)) as transport:
        manager = service_unit.installed(transport)
        if manager is None:
            console.print(f"no service is installed on {device.name}")
            return
        service_unit.uninstall(transport, manager)
    console.print(f"removed {service_unit.UNIT} from {device.name} ({manager.scope} unit)")


def _status(config: PipelineConfig, device: NamedDevice) -> bool:
    """Print whether the server runs on the device and what /healthz says; True when it is healthy."""
    with connect(device.host, config.host(device.host)) as transport:
        pid = _running_pid(transport, service_unit.installed(transport))
        if pid is None:
            console.print(f"no server runs on {device.name}")
            return False
        port = transport.run(f"cat {quote(transport.path(PORT_FILE))}").stdout.strip()
        python = venv_python(transport)
        health = _health(transport, python, int(port)) if port.isdigit() else None
    if health is None:
        console.print(f"the server on {device.name} (pid {pid}) runs but does not answer /healthz on port {port}")
        return False
    console.print(
        f"serving on {device.name} port {port} (pid {pid}): {health.backend} ({health.provider}), "
        f"{health.labels:,} labels, {health.queue.served} served, {health.queue.refused} refused, "
        f"up {health.uptime_s:.0f} s"
    )
    return True


def _put_auth(transport: Transport, api_auth: str) -> str:
    """The credentials as a 0600 file on the host: never on a command line, where `ps` would show them, and
    never readable by others, not even for a moment: uploaded into a fresh 0700 folder, then moved in place."""
    remote = transport.path(AUTH_FILE)
    private = transport.check(
        f"umask 077 && mktemp -d {quote(transport.path('.credentials-XXXXXX'))}", what="making a private folder"
    ).stdout.strip()
    put_private(transport, {AUTH_FILE: api_auth.replace(",", "\n") + "\n"}, private)
    transport.check(
        f"mv -f {quote(private)}/{AUTH_FILE} {quote(remote)} && rmdir {quote(private)}",
        what="putting the credentials file in place",
    )
    return remote


_HEALTH_PROBE = (
    "import json, sys, urllib.request; "
    "health = json.load(urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=3)); "
    "print(json.dumps(health)); "
    "sys.exit(0 if {pid} in (None, health.get('pid')) else 5)"
)


def _probe(python: str, port: int, pid: int | None = None) -> str:
    """A command that prints the server's /healthz as JSON, run on the host (the port is loopback there);
    with `pid`, it fails unless that process is the one answering."""
    return f"{quote(python)} -c {quote(_HEALTH_PROBE.format(port=port, pid=pid))}"


def _health(transport: Transport, python: str, port: int) -> Health | None:
    result = transport.run(_probe(python, port), timeout=30)
    return Health.model_validate_json(result.stdout) if result.ok else None


def _wait_healthy(transport: Transport, python: str, port: int, pid: int) -> Health | None:
    """Poll /healthz on the host (in one remote loop, bounded) until our own process `pid` answers, or it
    has died: another server already on the port answers too, but with its own pid."""
    probe = _probe(python, port, pid)
    result = transport.run(
        f"i=0; while [ $i -lt {START_TIMEOUT_S * 2} ]; do {probe} 2>/dev/null && exit 0; "
        f"kill -0 {pid} 2>/dev/null || exit 3; sleep 0.5; i=$((i + 1)); done; exit 4",
        timeout=START_TIMEOUT_S + 30,
    )
    return Health.model_validate_json(result.stdout.strip().splitlines()[-1]) if result.ok else None
