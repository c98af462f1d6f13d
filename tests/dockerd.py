"""A private Docker Engine for the tests, and the Pulsar2 stand-in image it runs.

dockerd as Debian's docker.io ships it: overlay2 storage where the kernel has overlay (a container starts
in ~0.1 s; vfs, the fallback, copies the whole image for every container), no bridge and no iptables, its
data root, exec root and socket in a short private folder (containerd's socket path must stay under 108
bytes), stopped by pid at the end. The image is `docker import` of a rootfs holding only what the stand-in
runs: this machine's Python with the standard-library modules the stand-in's imports load, the packages
it imports (without their tests), tests/standins/pulsar2 as /usr/bin/pulsar2, and the shared libraries
all of these load. No registry.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
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
STANDIN_SCRIPTS = (STANDINS / "pulsar2", STANDINS / "python" / "axmodel_notes.py")
START_TIMEOUT_S = 60
# Third-party packages the stand-in's imports load, copied whole (they import lazily inside).
PACKAGES = ("numpy", "onnx", "google.protobuf", "ml_dtypes", "typing_extensions", "rich", "markdown_it", "mdurl")
# Modules loaded lazily by what the stand-in calls: tarfile.open opens compressed archives with these.
LAZY_MODULES = ("gzip", "bz2", "lzma")
# Folders of those packages that nothing imports at run time (tests, test data, build helpers).
SKIPPED_DIRS = {"__pycache__", "test", "tests", "testing", "f2py", "distutils", "_pyinstaller", "data", "doc"}
TOOLS = ("/bin/rm", "/bin/chown", "/bin/sleep", "/bin/sh")  # what compile's helper containers run


class DockerUnavailable(Exception):
    """No engine can start here (not root, no dockerd): the tests that need one are skipped, saying why."""


@dataclass(frozen=True)
class DockerEngine:
    socket: str
    root: Path
    storage_driver: str

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=f"unix://{self.socket}", timeout=120)


def storage_drivers() -> list[str]:
    """overlay2 first where the kernel lists overlay (docker's default driver), then vfs, which needs
    nothing from the kernel."""
    with contextlib.suppress(OSError):
        if "overlay" in Path("/proc/filesystems").read_text().split():
            return ["overlay2", "vfs"]
    return ["vfs"]


@contextlib.contextmanager
def running_dockerd() -> Iterator[DockerEngine]:
    """A private dockerd on the first storage driver that starts (overlay2 may be listed yet refused,
    e.g. on a data root that is itself on overlayfs)."""
    if os.geteuid() != 0:
        raise DockerUnavailable("dockerd needs root on this machine")
    if not Path(DOCKERD).exists():
        raise DockerUnavailable("dockerd is not installed (tests/run.sh installs Debian's docker.io)")
    failures = []
    for driver in storage_drivers():
        root = Path(tempfile.mkdtemp(prefix="dk", dir="/tmp"))
        engine = DockerEngine(str(root / "s"), root, driver)
        try:
            process = _start(engine)
        except DockerUnavailable as exc:
            failures.append(f"{driver}: {exc}")
            shutil.rmtree(root, ignore_errors=True)
            continue
        try:
            yield engine
        finally:
            _stop(process)
            shutil.rmtree(root, ignore_errors=True)
        return
    raise DockerUnavailable("; ".join(failures))


def _start(engine: DockerEngine) -> subprocess.Popen:
    root = engine.root
    command = [
        DOCKERD,
        f"--storage-driver={engine.storage_driver}",
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
    except DockerUnavailable:
        _stop(process)
        raise
    return process


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


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


def build_standin_rootfs(folder: Path) -> Path:
    """The stand-in image's rootfs as a tar in `folder` (made once per test run, imported by each engine)."""
    rootfs = folder / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        for folder_name, mode in (("/tmp", 0o1777), ("/data", 0o755), ("/root", 0o700)):
            info = tarfile.TarInfo(folder_name.lstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        for link, target in _merged_usr_links().items():
            _add_link(tar, link, target)
        added: set[str] = set()
        for path in _image_files():
            _add_file(tar, path, added)
        _add_text(tar, "/usr/bin/pulsar2", f"#!{_python()}\n" + (STANDINS / "pulsar2").read_text().split("\n", 1)[1])
        _add_text(tar, f"{_site_packages()}/axmodel_notes.py", (STANDINS / "python/axmodel_notes.py").read_text())
        _add_text(tar, "/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
        _add_link(tar, "/usr/bin/python3", _python())
    return rootfs


def import_standin_image(engine: DockerEngine, tag: str, rootfs: Path) -> str:
    """The stand-in image under `tag` (as `docker load` of Axera's archive would name it); returns its id."""
    repository, _, version = tag.partition(":")
    with contextlib.closing(engine.client()) as client:
        client.api.import_image(
            src=str(rootfs), repository=repository, tag=version, changes=["ENV PYTHONDONTWRITEBYTECODE=1"]
        )
        return str(client.images.get(tag).id)


def _python() -> str:
    return str(Path(sys.executable).resolve())


def _site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def _image_files() -> list[str]:
    """The interpreter, the standard-library modules the stand-in's imports load, its packages, a few
    tools, and every shared library they load (as ldd finds them)."""
    files = [_python(), *TOOLS, *_loaded_stdlib()]
    files += _tree(Path(sysconfig.get_paths()["stdlib"]) / "encodings")  # codecs are looked up lazily
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, name
        origin = Path(spec.origin)
        files += _tree(origin.parent) if origin.name == "__init__.py" else [str(origin)]
    libs = Path(_site_packages()) / "numpy.libs"
    files += _tree(libs) if libs.is_dir() else []
    binaries = [f for f in files if f.endswith(".so") or ".so." in f or f == _python() or f.startswith("/bin/")]
    return sorted({_canonical(f) for f in files} | _shared_libraries(binaries))


def _standin_imports() -> list[str]:
    """Every module the stand-in scripts import, at the top or inside a function."""
    names = set(LAZY_MODULES)
    for script in STANDIN_SCRIPTS:
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
    return sorted(names - {"__future__", "axmodel_notes"})


def _loaded_stdlib() -> list[str]:
    """The standard-library files a Python that imports what the stand-in imports has loaded."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {_standin_imports()!r}: importlib.import_module(name)\n"
        "print(json.dumps([getattr(m, '__file__', None) for m in list(sys.modules.values())]))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)
    stdlib = sysconfig.get_paths()["stdlib"]
    return [f for f in loaded if f and f.startswith(stdlib) and "site-packages" not in f]


def _tree(root: Path) -> list[str]:
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        found += [str(Path(folder, n)) for n in names if not n.endswith((".pyc", ".a", ".pyi"))]
    return found


def _shared_libraries(binaries: list[str]) -> set[str]:
    found: set[str] = set()
    for binary in binaries:
        result = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False)
        for line in result.stdout.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0] if parts else ""
            if path.startswith("/"):
                found.add(_canonical(path))
    return found


def _merged_usr_links() -> dict[str, str]:
    """/lib, /bin ... as they are here: on a merged-/usr Debian they are links into /usr, so a library
    ldd names under /lib is one file in the image, not two."""
    return {
        f"/{name}": os.readlink(f"/{name}") for name in ("bin", "sbin", "lib", "lib64") if Path(f"/{name}").is_symlink()
    }


def _canonical(path: str) -> str:
    """The path with its folders' links resolved (the file itself may stay a link: libfoo.so.6)."""
    return str(Path(os.path.realpath(Path(path).parent)) / Path(path).name)


def _add_file(tar: tarfile.TarFile, path: str, added: set[str]) -> None:
    """A file once, or a link together with the file it points to."""
    if path in added:
        return
    added.add(path)
    if os.path.islink(path):
        _add_link(tar, path, os.readlink(path))
        _add_file(tar, _canonical(str(Path(path).parent / os.readlink(path))), added)
    else:
        tar.add(path, recursive=False)


def _add_link(tar: tarfile.TarFile, path: str, target: str) -> None:
    info = tarfile.TarInfo(path.lstrip("/"))
    info.type, info.linkname = tarfile.SYMTYPE, target
    tar.addfile(info)


def _add_text(tar: tarfile.TarFile, path: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(path.lstrip("/"))
    info.size, info.mode = len(data), 0o755
    tar.addfile(info, io.BytesIO(data))
