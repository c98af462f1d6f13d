"""runtime/ on a device: the code beside the fetched models and a virtualenv with its requirements.

The virtualenv is made once and rebuilt only when runtime/requirements.txt changes; it sees system
site-packages so a system-wide vendor axengine wheel stays visible. The smoke test and the server both
run from here.
"""

from __future__ import annotations

from pathlib import Path

from common.hashing import sha256_file
from pipeline.hosts import Transport
from pipeline.hosts.base import quote
from pipeline.hosts.sync import upload

PROJECT = Path(__file__).resolve().parent.parent
RUNTIME_DIR = PROJECT / "runtime"
SHIPPED_PACKAGES = ("runtime", "common")  # the device runtime and the bottom package it imports
VENV = "venv"  # in the host's workdir


def install_runtime(transport: Transport, python: str) -> tuple[str, str]:
    """Upload runtime/ and common/ (only changed files travel) and ensure the venv; returns (app dir, venv
    python)."""
    app = transport.path("app")
    upload(transport, {path: f"{app}/{path.relative_to(PROJECT).as_posix()}" for path in runtime_files()})
    return app, _ensure_venv(transport, python, app)


def runtime_files() -> list[Path]:
    code = [path for package in SHIPPED_PACKAGES for path in sorted((PROJECT / package).rglob("*.py"))]
    return [*code, RUNTIME_DIR / "requirements.txt"]


def venv_python(transport: Transport) -> str:
    """The python of the device's runtime virtualenv (made by install_runtime)."""
    return f"{transport.path(VENV)}/bin/python"


def _ensure_venv(transport: Transport, python: str, app: str) -> str:
    """The device virtualenv's python, (re)built when runtime/requirements.txt changed."""
    venv = transport.path(VENV)
    requirements = f"{app}/runtime/requirements.txt"
    digest = sha256_file(RUNTIME_DIR / "requirements.txt")
    marker = f"{venv}/.requirements.sha256"
    if transport.run(f"cat {quote(marker)}").stdout.strip() != digest:
        transport.check(
            f"{quote(python)} -m venv --system-site-packages {quote(venv)}",
            what=f"creating a virtualenv with {python}",
            hint="install python3-venv on the device, or set the host's `python` to another interpreter",
        )
        transport.check(
            f"{quote(venv)}/bin/python -m pip install --disable-pip-version-check -q -r {quote(requirements)}",
            what="installing the runtime requirements",
            hint="the device needs access to PyPI (or a local mirror) once",
            timeout=1800,
        )
        transport.check(f"echo {digest} > {quote(marker)}", what="recording the requirements hash")
    wheel_install = (
        f"{quote(venv)}/bin/python -c 'import axengine' 2>/dev/null || "
        f"for w in {quote(transport.workdir)}/axengine-*.whl; do "
        f'if [ -f "$w" ]; then {quote(venv)}/bin/python -m pip install -q "$w"; fi; done'
    )
    transport.run(wheel_install)
    return venv_python(transport)
