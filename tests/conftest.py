"""Shared fixtures: config files written per test, and one tiny-CLIP pipeline run reused by many tests."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from deploy.device_runtime import VENV, install_runtime
from pipeline.hosts import connect
from runtime.clip import VOCAB_DIR, ClipRuntime
from runtime.interrogator import Interrogator
from runtime.label_tables import LabelTables
from stages.config import Host, PipelineConfig, load_config
from tests.dockerd import (
    DockerEngine,
    DockerUnavailable,
    build_standin_rootfs,
    import_standin_image,
    running_dockerd,
)
from tests.helpers import MODELS, build_every_stage, device_set, tiny_config_dict
from tests.loopback import app_clients
from tests.once import hardlinked_copy, made_once
from tests.sshd import SshServer, start_sshd

DEVICE_PYTHON = "/usr/bin/python3"  # Debian's, as on a Raspberry Pi (tests/run.sh installs python3-venv)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a YAML config (a dict, or raw text) into tmp_path and return its path."""

    def write(data: dict | str, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def built_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every stage run once per test run on the tiny CLIP; tests copy the result rather than rebuild it."""
    return made_once(tmp_path_factory, "built", build_every_stage) / "artifacts"


@pytest.fixture(scope="session")
def family_build(tmp_path_factory: pytest.TempPathFactory, built_artifacts: Path) -> Callable[[str], Path]:
    """family -> its artifacts after every stage, built once per test run (CLIP's are the shared build)."""

    def build(family: str) -> Path:
        if family == "clip":
            return built_artifacts
        made = made_once(tmp_path_factory, f"built-{family}", lambda root: build_every_stage(root, MODELS[family]))
        return made / "artifacts"

    return build


@pytest.fixture(scope="module")
def interrogator(built_artifacts: Path) -> Interrogator:
    """The built device models, loaded as the server loads them (image encoder and label tables)."""
    models = device_set(built_artifacts.parent / "device" / "models")
    return Interrogator(ClipRuntime.load(models), LabelTables.load(models / VOCAB_DIR))


@pytest.fixture
def serve(interrogator: Interrogator) -> Iterator[Callable[..., httpx.Client]]:
    """serve(limits=ConnectionLimits, **ServerSettings) -> an httpx client of a fresh app on a real
    uvicorn; closed after the test."""
    with app_clients() as start:
        yield functools.partial(start, interrogator)


@pytest.fixture
def tiny_pipeline(built_artifacts: Path, tmp_path: Path) -> Callable[..., PipelineConfig]:
    """A private copy of the built artifacts plus a config pointing at it, with optional overrides."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(built_artifacts, artifacts, copy_function=shutil.copy2)

    def make(hosts: dict | None = None, device: dict | None = None, **stage_overrides: dict) -> PipelineConfig:
        data = tiny_config_dict(artifacts)
        data["hosts"].update(hosts or {})
        if device:
            data["device"] = device
        for stage, values in stage_overrides.items():
            data["stages"][stage].update(values)
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return load_config(path)

    return make


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real sshd on 127.0.0.1 for the whole session (see tests/sshd.py)."""
    process, server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def zsh_ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real sshd on 127.0.0.1 whose user's login shell is zsh, as on a Mac (see tests/sshd.py)."""
    process, server = start_sshd(tmp_path_factory.mktemp("sshd-zsh"), login_shell=shutil.which("zsh") or "zsh")
    try:
        yield server
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def login_shell() -> str:
    """The login shell of the hosts a test reaches over SSH; tests of the remote core are parametrized
    over bash and zsh (`@pytest.mark.parametrize("login_shell", LOGIN_SHELLS)`)."""
    return "bash"


@pytest.fixture
def ssh_host(login_shell: str, request: pytest.FixtureRequest) -> SshServer:
    """The sshd whose login shell is `login_shell`."""
    return request.getfixturevalue({"bash": "ssh_server", "zsh": "zsh_ssh_server"}[login_shell])


@pytest.fixture(scope="session")
def device_venv(tmp_path_factory: pytest.TempPathFactory, ssh_server: SshServer) -> Path:
    """A device's runtime venv, installed once per test run over SSH by the product's own install_runtime:
    the fresh install proven end to end, with Debian 12's own Python where it is there (Raspberry Pi OS
    bookworm's: 3.11, no packages of ours), so every pinned package comes from the registry. Device
    workdirs get hard-linked copies of it (see `device_workdir`)."""

    def install(workdir: Path) -> None:
        with connect("device", Host(**ssh_server.host_entry(workdir))) as transport:
            install_runtime(transport, DEVICE_PYTHON if Path(DEVICE_PYTHON).exists() else "python3")

    return made_once(tmp_path_factory, "device-venv", install) / VENV


@pytest.fixture
def device_workdir(device_venv: Path) -> Callable[[Path], Path]:
    """device_workdir(folder) -> folder, holding a copy of the installed runtime venv, as a device that
    ran the pipeline before has one (its pip install is what made device tests take a minute each)."""

    def seed(workdir: Path) -> Path:
        workdir.mkdir(parents=True, exist_ok=True)
        if not (workdir / VENV).exists():
            hardlinked_copy(device_venv, workdir / VENV)
        return workdir

    return seed


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A private dockerd for the session (see tests/dockerd.py); its tests are skipped, saying why, where
    none can start."""
    try:
        with running_dockerd() as engine:
            yield engine
    except DockerUnavailable as exc:
        pytest.skip(f"no Docker Engine for this test: {exc}")


@pytest.fixture(scope="session")
def pulsar2_image(docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Pulsar2 stand-in image, loaded as `pulsar2:5.1` as Axera's archive names it; its id. Its rootfs
    is made once per test run, then imported into each worker's engine."""
    rootfs = made_once(tmp_path_factory, "pulsar2-rootfs", build_standin_rootfs) / "rootfs.tar"
    return import_standin_image(docker_engine, "pulsar2:5.1", rootfs)


@pytest.fixture
def build_host_workdir(tmp_path: Path) -> Path:
    return tmp_path / "build host"


@pytest.fixture
def standin_pulsar2(
    pulsar2_image: str, docker_engine: DockerEngine, build_host_workdir: Path
) -> Iterator[Callable[..., None]]:
    """Set how the stand-in Pulsar2 behaves in this test's build host workdir (exit code, sleep ...); its
    build containers are removed after the test, whatever it left."""

    def configure(**behaviour: object) -> None:
        build_host_workdir.mkdir(parents=True, exist_ok=True)
        (build_host_workdir / "standin.json").write_text(json.dumps(behaviour))

    configure()
    yield configure
    with contextlib.closing(docker_engine.client()) as client:
        for container in client.containers.list(
            all=True, filters={"label": f"clip-axera.workdir={build_host_workdir}"}
        ):
            container.remove(force=True)


@pytest.fixture
def pulsar2_build(
    ssh_server: SshServer,
    standin_pulsar2: Callable[..., None],
    docker_engine: DockerEngine,
    build_host_workdir: Path,
    device_workdir: Callable[[Path], Path],
    tmp_path: Path,
) -> Callable[..., PipelineConfig]:
    """pulsar2_build(built, **top) -> a config over a copy of `built`'s artifacts (in tmp_path) that compiles
    with the stand-in Pulsar2 on `mac` (the session's sshd, the real dockerd) and puts the models on `pi`
    (the same sshd, its own workdir); `top` replaces top-level keys of the tiny config (model, tagger ...)."""

    def make(built: Path, **top: object) -> PipelineConfig:
        artifacts = tmp_path / "artifacts"
        shutil.copytree(built, artifacts, copy_function=shutil.copy2)
        hosts = {
            "mac": ssh_server.host_entry(build_host_workdir, docker_socket=docker_engine.socket),
            "pi": ssh_server.host_entry(device_workdir(tmp_path / "pi device")),
        }
        data = {**tiny_config_dict(artifacts), **top, "hosts": hosts, "device": {"host": "pi"}}
        data["stages"]["compile"].update({"target": "pulsar2", "host": "mac"})
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return load_config(path)

    return make
