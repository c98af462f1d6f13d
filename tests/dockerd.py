"""A private Docker Engine for the tests, and the Pulsar2 stand-in image it runs.

dockerd as Debian's docker.io ships it: vfs storage (no overlay mounts needed), no bridge and no iptables,
its data root, exec root and socket in a short private folder (containerd's socket path must stay under
108 bytes), stopped by pid at the end. The image is `docker import` of a rootfs made from this machine's
Python with the packages the stand-in needs and tests/standins/pulsar2 as /usr/bin/pulsar2: no registry.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker

DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
STANDINS = Path(__file__).resolve().parent / "standins"
START_TIMEOUT_S = 60
# What the stand-in imports (numpy and onnx to read models and calibration data, rich for its table).
PACKAGES = ("numpy", "onnx", "google.protobuf", "ml_dtypes", "typing_extensions", "rich", "markdown_it", "mdurl")
SKIPPED_DIRS = {"__pycache__", "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}
TOOLS = ("/bin/rm", "/bin/chown", "/bin/sleep", "/bin/sh")  # what compile's helper containers run


class DockerUnavailable(Exception):
    """No engine can start here (not root, no dockerd): the tests that need one are skipped, saying why."""


@dataclass(frozen=True)
class DockerEngine:
    socket: str
    root: Path

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=f"unix://{self.socket}", timeout=120)


@contextlib.contextmanager
def running_dockerd() -> Iterator[DockerEngine]:
    if os.geteuid() != 0:
        raise DockerUnavailable("dockerd needs root on this machine")
    if not Path(DOCKERD).exists():
        raise DockerUnavailable("dockerd is not installed (tests/run.sh installs Debian's docker.io)")
    root = Path(tempfile.mkdtemp(prefix="dk", dir="/tmp"))
    engine = DockerEngine(str(root / "s"), root)
    command = [
        DOCKERD,
        "--storage-driver=vfs",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        f"--data-root={root / 'data'}",
        f"--exec-root={root / 'x'}",
        f"--pidfile={root / 'pid'}",
        "-H",
        f"unix://{engine.socket}",
    ]
    with (root / "log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(engine, process)
        yield engine
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def _wait_until_up(engine: DockerEngine, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (engine.root / "log").read_text(errors="replace").strip().splitlines()[-3:]
            raise DockerUnavailable(f"dockerd exited: {' / '.join(tail)}")
        with contextlib.suppress(Exception), contextlib.closing(engine.client()) as client:
            client.ping()
            return
        time.sleep(0.2)
    raise DockerUnavailable(f"dockerd did not answer within {START_TIMEOUT_S} s")


def import_standin_image(engine: DockerEngine, tag: str) -> str:
    """The stand-in image under `tag` (as `docker load` of Axera's archive would name it); returns its id."""
    rootfs = engine.root / "rootfs.tar"
    with tarfile.open(rootfs, "w", dereference=True) as tar:  # a symlink's target may lie outside the image
        for folder, mode in (("/tmp", 0o1777), ("/data", 0o755), ("/root", 0o700)):
            info = tarfile.TarInfo(folder.lstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        for path in _image_files():
            tar.add(path, recursive=False)
        _add_text(tar, "/usr/bin/pulsar2", f"#!{_python()}\n" + (STANDINS / "pulsar2").read_text().split("\n", 1)[1])
        _add_text(tar, f"{_site_packages()}/axmodel_notes.py", (STANDINS / "python/axmodel_notes.py").read_text())
        _add_text(tar, "/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
        link = tarfile.TarInfo("usr/bin/python3")
        link.type, link.linkname = tarfile.SYMTYPE, _python()
        tar.addfile(link)
    repository, _, version = tag.partition(":")
    with contextlib.closing(engine.client()) as client:
        client.api.import_image(
            src=str(rootfs), repository=repository, tag=version, changes=["ENV PYTHONDONTWRITEBYTECODE=1"]
        )
        image_id = str(client.images.get(tag).id)
    rootfs.unlink()
    return image_id


def _python() -> str:
    return str(Path(sys.executable).resolve())


def _site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def _image_files() -> list[str]:
    """The interpreter, its standard library, the stand-in's packages, a few tools, and every shared
    library they load (as ldd finds them), at the paths they have here."""
    stdlib, site = Path(sysconfig.get_paths()["stdlib"]), Path(_site_packages())
    files = [_python(), *TOOLS]
    files += _tree(stdlib, skip={site})
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, name
        origin = Path(spec.origin)
        files += _tree(origin.parent) if origin.name == "__init__.py" else [str(origin)]
    libs = site / "numpy.libs"
    files += _tree(libs) if libs.is_dir() else []
    binaries = [f for f in files if f.endswith(".so") or ".so." in f or f == _python() or f.startswith("/usr/bin/")]
    return sorted(set(files) | _shared_libraries(binaries + list(TOOLS)))


def _tree(root: Path, skip: set[Path] | None = None) -> list[str]:
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [
            d
            for d in dirs
            if d not in SKIPPED_DIRS
            and not d.startswith("config-")
            and Path(folder, d) not in (skip or set())
            and Path(folder, d).name != "site-packages"
        ]
        found += [
            str(Path(folder, n)) for n in names if not n.endswith((".pyc", ".a")) and not n.startswith("_tkinter")
        ]
    return found


def _shared_libraries(binaries: list[str]) -> set[str]:
    found: set[str] = set()
    for binary in binaries:
        result = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False)
        for line in result.stdout.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0] if parts else ""
            if path.startswith("/"):
                found.add(os.path.normpath(path))  # ldd may print numpy/_core/../../numpy.libs/...
                found.add(str(Path(path).resolve()))
    return found


def _add_text(tar: tarfile.TarFile, path: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(path.lstrip("/"))
    info.size, info.mode = len(data), 0o755
    tar.addfile(info, io.BytesIO(data))
