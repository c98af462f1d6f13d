"""The device runtime's lock: every package runtime/requirements.txt pulls, at the version constraints.txt
pins, i.e. the versions CI tests. The device venv installs `-r requirements.txt -c constraints.txt`, so a
Raspberry Pi gets those versions whatever its system site-packages or PyPI's newest hold.

Made from the installed packages' own requirements (importlib.metadata), evaluated for the device
(Raspberry Pi OS: Linux, aarch64, CPython 3.11) and for this machine. A test keeps the file equal to what
this makes, so the two never drift: after raising a pin in constraints.txt, run
`python -m deploy.runtime_lock` and commit both.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from common.errors import UserError

PROJECT = Path(__file__).resolve().parent.parent
REQUIREMENTS = PROJECT / "runtime" / "requirements.txt"
LOCK = PROJECT / "runtime" / "constraints.txt"
PROJECT_PINS = PROJECT / "constraints.txt"
DEVICE_ENVIRONMENT = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "aarch64",
    "python_version": "3.11",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
HEADER = """\
# The device runtime's lock, made by `python -m deploy.runtime_lock` from constraints.txt: every package
# runtime/requirements.txt pulls, pinned at the version CI tests. The device venv installs
# `-r requirements.txt -c constraints.txt`. Do not edit: raise the pin in ../constraints.txt, then rerun.
"""


def requirement_lines(path: Path) -> list[Requirement]:
    """The requirements of a pip requirements/constraints file (comments and blank lines skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [Requirement(line) for line in lines if line]


def project_pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}."""
    return {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in requirement_lines(PROJECT_PINS)}


def runtime_closure() -> set[str]:
    """The canonical names of the runtime's requirements and of everything they require, on the device or
    here (a constraint the device does not need is never installed)."""
    environments = [{**default_environment(), **DEVICE_ENVIRONMENT}, dict(default_environment())]
    pending = [(r, "") for r in requirement_lines(REQUIREMENTS)]
    found: set[str] = set()
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker and not any(requirement.marker.evaluate({**e, "extra": extra}) for e in environments):
            continue
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found.add(name)
        for text in importlib.metadata.requires(name) or []:
            pending += [(Requirement(text), wanted) for wanted in ["", *requirement.extras]]
    return found


def render_lock() -> str:
    pins = project_pins()
    closure = runtime_closure()
    unpinned = sorted(closure - set(pins))
    if unpinned:
        raise UserError(
            f"{PROJECT_PINS.name} pins no version of {', '.join(unpinned)}, which the device runtime needs",
            hint="install the tested versions and add them to constraints.txt",
        )
    return HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(closure))


def main() -> None:
    LOCK.write_text(render_lock(), encoding="utf-8")
    print(f"wrote {LOCK.relative_to(PROJECT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
