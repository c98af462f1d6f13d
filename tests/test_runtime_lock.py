"""The device runtime gets exactly the versions CI tests: the runtime lock is constraints.txt's pins for
what runtime/requirements.txt pulls, and a fresh device venv holds those versions and nothing unpinned."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from deploy.device_runtime import LOCK, locked_versions
from deploy.runtime_lock import REQUIREMENTS as RUNTIME_REQUIREMENTS
from deploy.runtime_lock import render_lock, requirement_lines


def test_the_runtime_lock_is_what_constraints_txt_pins_for_the_runtime() -> None:
    assert LOCK.read_text(encoding="utf-8") == render_lock(), "run `python -m deploy.runtime_lock` and commit"


def test_the_lock_pins_every_runtime_requirement_and_dask_at_the_controller_s_version() -> None:
    locked = locked_versions()
    assert {canonicalize_name(r.name) for r in requirement_lines(RUNTIME_REQUIREMENTS)} <= set(locked)
    assert locked["distributed"] == locked["dask"]  # a worker of another version than the scheduler is refused


@pytest.mark.slow
def test_a_fresh_device_venv_holds_exactly_the_locked_versions(device_venv: Path) -> None:
    """The venv the device_venv fixture installed over SSH with the device's Python (Debian's, whose
    system site-packages the venv sees): every locked package it imports is at the locked version, and
    what pip installed into the venv itself is only locked packages."""

    def freeze(*flags: str) -> dict[str, str]:
        python = str(device_venv / "bin" / "python")
        lines = subprocess.run([python, "-m", "pip", "freeze", *flags], capture_output=True, text=True, check=True)
        pins = (line.split("==", 1) for line in lines.stdout.split() if "==" in line)
        return {canonicalize_name(name): version for name, version in pins}

    locked = locked_versions()
    seen = freeze()  # the venv's and the system's, as the venv imports them
    assert {name: seen[name] for name in locked if name in seen} == {n: v for n, v in locked.items() if n in seen}
    for requirement in requirement_lines(RUNTIME_REQUIREMENTS):
        assert canonicalize_name(requirement.name) in seen, requirement
    installed_here = freeze("--local")
    assert set(installed_here) <= set(locked), set(installed_here) - set(locked)
    if "/usr/bin" in (device_venv / "pyvenv.cfg").read_text():  # Debian's Python: a real install from the registry
        assert {"numpy", "onnxruntime", "distributed"} <= set(installed_here)
