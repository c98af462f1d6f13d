"""runtime/ on a device: the code beside the fetched models and a virtualenv with its requirements.

The virtualenv gets exactly the versions CI tests (runtime/requirements.txt constrained by the runtime lock,
runtime/constraints.txt) and is rebuilt from scratch when either file changes. It sees system
site-packages so a system-wide vendor axengine wheel stays visible; a pinned package the system also has
is installed into the venv at the pinned version, which shadows the system's. The smoke test, the server
and the fleet's worker all run from here.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.hashing import sha256_text
from pipeline.errors import HostError
from pipeline.hosts import Transport
from pipeline.hosts.base import quote
from pipeline.hosts.sync import upload

PROJECT = Path(__file__).resolve().parent.parent
RUNTIME_DIR = PROJECT / "runtime"
SHIPPED_PACKAGES = ("runtime", "common")  # the device runtime and the bottom package it imports
VENV = "venv"  # in the host's workdir
REQUIREMENTS = RUNTIME_DIR / "requirements.txt"
LOCK = RUNTIME_DIR / "constraints.txt"  # made by deploy/runtime_lock.py from the project's constraints.txt
MARKER = ".requirements.sha256"  # in the venv: the digest of the requirements it was built from
INSTALL_TIMEOUT_S = 1800  # the longest pip may take: one download and install of the runtime's wheels on a Pi


def install_runtime(transport: Transport, python: str) -> tuple[str, str]:
    """Upload runtime/ and common/ (only changed files travel) and ensure the venv; returns (app dir, venv
    python)."""
    app = transport.path("app")
    upload(transport, {path: f"{app}/{path.relative_to(PROJECT).as_posix()}" for path in runtime_files()})
    return app, _ensure_venv(transport, python, app)


def runtime_files() -> list[Path]:
    code = [path for package in SHIPPED_PACKAGES for path in sorted((PROJECT / package).rglob("*.py"))]
    return [*code, REQUIREMENTS, LOCK]


def requirements_digest() -> str:
    """What the venv was built from: the requirements and the lock together."""
    return sha256_text(REQUIREMENTS.read_text(encoding="utf-8") + "\0" + LOCK.read_text(encoding="utf-8"))


def locked_versions() -> dict[str, str]:
    """The runtime lock as {name: version}."""
    lines = (line.split("#", 1)[0].strip() for line in LOCK.read_text(encoding="utf-8").splitlines())
    return dict(line.split("==", 1) for line in lines if line)


def installed_versions(transport: Transport) -> dict[str, str]:
    """The version the device's venv imports of each package in the runtime lock ("missing" when none)."""
    script = (
        "import importlib.metadata as m, json, sys\n"
        "def version(name):\n"
        "    try:\n        return m.version(name)\n"
        "    except m.PackageNotFoundError:\n        return 'missing'\n"
        "print(json.dumps({n: version(n) for n in sys.argv[1:]}))"
    )
    names = " ".join(quote(name) for name in locked_versions())
    result = transport.check(f"{quote(venv_python(transport))} -c {quote(script)} {names}", what="reading versions")
    return json.loads(result.stdout)


def venv_python(transport: Transport) -> str:
    """The python of the device's runtime virtualenv (made by install_runtime)."""
    return f"{transport.path(VENV)}/bin/python"


def _ensure_venv(transport: Transport, python: str, app: str) -> str:
    """The device virtualenv's python, built from scratch when the requirements or the lock changed."""
    venv = transport.path(VENV)
    digest = requirements_digest()
    marker = f"{venv}/{MARKER}"
    if transport.run(f"cat {quote(marker)}").stdout.strip() != digest:
        _build_venv(transport, python, app, venv)
        _check_versions(transport)
        transport.check(
            f"echo {digest} > {quote(marker)}.tmp && mv {quote(marker)}.tmp {quote(marker)}",
            what="recording the requirements hash",
        )
    _install_axengine(transport, venv)
    return venv_python(transport)


def _build_venv(transport: Transport, python: str, app: str, venv: str) -> None:
    transport.check(
        f"{quote(python)} -m venv --clear --system-site-packages {quote(venv)}",
        what=f"creating a virtualenv with {python}",
        hint="install python3-venv on the device, or set the host's `python` to another interpreter",
    )
    transport.check(
        f"{quote(venv)}/bin/python -m pip install --disable-pip-version-check -q"
        f" -r {quote(app)}/runtime/requirements.txt -c {quote(app)}/runtime/constraints.txt",
        what="installing the runtime requirements at the versions of runtime/constraints.txt",
        hint="the device needs access to PyPI (or a local mirror) once; the pins need wheels for its platform",
        timeout=INSTALL_TIMEOUT_S,
    )


def _check_versions(transport: Transport) -> None:
    """Every locked package the venv imports is at the locked version (a system package pip left in place
    would otherwise shadow nothing and go unnoticed)."""
    wrong = [
        f"{name} {version} (locked {locked})"
        for (name, locked), version in zip(
            locked_versions().items(), installed_versions(transport).values(), strict=True
        )
        if version not in (locked, "missing")
    ]
    if wrong:
        raise HostError(
            transport.name,
            f"the runtime venv has other versions than runtime/constraints.txt: {', '.join(wrong)}",
            hint=f"remove {transport.path(VENV)} on the device and run again",
        )


def _install_axengine(transport: Transport, venv: str) -> None:
    """Axera's pyaxengine wheel (not on PyPI) from the workdir into the venv, when the venv cannot import
    axengine yet and a wheel is there; pip's exit status and then the import are checked."""
    python = f"{quote(venv)}/bin/python"
    if transport.run(f"{python} -c 'import axengine'").ok:
        return
    wheels = transport.run(f"ls -1 {quote(transport.workdir)} 2>/dev/null").stdout.split()
    wheels = sorted(name for name in wheels if name.startswith("axengine-") and name.endswith(".whl"))
    if not wheels:
        return
    wheel = transport.path(wheels[-1])
    hint = (
        f"{wheel} is pyaxengine's wheel from github.com/AXERA-TECH/pyaxengine/releases for this Python; "
        "axengine needs Axera's runtime (AXCL's axcl_host package for a card, the board's BSP on an AX650 board)"
    )
    transport.check(f"{python} -m pip install -q {quote(wheel)}", what=f"installing {wheels[-1]}", hint=hint)
    result = transport.run(f"{python} -c 'import axengine'")
    if not result.ok:
        raise HostError(transport.name, f"axengine from {wheels[-1]} does not import", hint=hint, tail=result.tail())
