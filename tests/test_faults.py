"""Faults injected into real runs: interrupts and kills mid-compile, two controllers on one build host,
connections dropped mid-transfer. Each ends with a clear message, the last good artifacts intact, and a
next run that resumes without --force."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from commands import serving
from common.hashing import sha256_file
from pipeline.errors import HostError
from pipeline.graph import StageGraph
from pipeline.hosts import openssh, remote_lock
from pipeline.hosts.local import LocalTransport
from pipeline.hosts.remote_lock import exclusive
from pipeline.hosts.ssh import SshTransport
from pipeline.hosts.sync import download, upload
from pipeline.records import read_records
from pipeline.runner import Outcome, RunRequest, run
from stages import ALL_STAGES
from stages.config import PipelineConfig, load_config
from tests.dockerd import DockerEngine
from tests.helpers import REPO, device_set, interruptible, tiny_config_dict
from tests.sshd import SshServer

pytestmark = pytest.mark.slow  # minutes of sshd, docker stand-in and device runs: `-m 'not slow'` skips

GRAPH = StageGraph(ALL_STAGES)


@pytest.fixture
def remote_config(
    tiny_pipeline, ssh_server: SshServer, standin_pulsar2, docker_engine: DockerEngine, build_host_workdir, tmp_path
):
    """compile with the stand-in Pulsar2 on `mac` (sshd, a real dockerd); everything else local. Returns
    (config, path)."""

    def make(**mac: object) -> tuple[PipelineConfig, Path]:
        hosts = {"mac": ssh_server.host_entry(build_host_workdir, docker_socket=docker_engine.socket, **mac)}
        config = tiny_pipeline(hosts=hosts, compile={"target": "pulsar2", "host": "mac"})
        return config, tmp_path / "pipeline.yaml"

    return make


def _invoke_all(config_path: Path) -> subprocess.Popen:
    return interruptible(
        [sys.executable, "-m", "invoke", "all", "--config", str(config_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # the local "device" runs the .axmodel files through the stand-in axengine, as the ssh one does
        env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO / "tests/standins/python")},
        start_new_session=True,
    )


def _build_containers(engine: DockerEngine, workdir: Path, **filters: object) -> list[str]:
    with contextlib.closing(engine.client()) as client:
        found = client.containers.list(all=True, filters={"label": f"clip-axera.workdir={workdir}", **filters})
        return [container.name for container in found]


def _wait_for_build(engine: DockerEngine, workdir: Path, seconds: float = 120) -> str:
    """The name of the first build container of `workdir` once it runs."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        running = _build_containers(engine, workdir, status="running")
        if running:
            return running[0]
        time.sleep(0.2)
    raise AssertionError("the build never started")


def _assert_artifacts_match_the_lock(artifacts: Path) -> None:
    records = read_records(artifacts)
    assert set(records) == {stage.name for stage in ALL_STAGES}
    for stage, record in records.items():
        assert record.outputs
        for name, state in record.outputs.items():
            assert sha256_file(artifacts / stage / name) == state.sha256, f"{stage}: {name}"


def test_ctrl_c_mid_compile_removes_the_container_and_the_next_run_resumes(
    remote_config, docker_engine: DockerEngine, build_host_workdir: Path, standin_pulsar2
) -> None:
    config, path = remote_config()
    before = (config.artifacts / "compile/compiled.json").read_bytes()
    standin_pulsar2(sleep=60)
    process = _invoke_all(path)
    _wait_for_build(docker_engine, build_host_workdir)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=180)  # the container is stopped and removed first: bounded, not instant
    assert process.returncode == 130, output
    assert "interrupted" in output and "Traceback" not in output
    assert _build_containers(docker_engine, build_host_workdir) == []  # stopped and removed, not left building
    assert (config.artifacts / "compile/compiled.json").read_bytes() == before  # last good kept
    assert not (config.artifacts / ".tmp").exists()
    assert not (Path(config.host("mac").workdir) / ".build.lock").exists()  # the build host lock released

    standin_pulsar2(sleep=0)
    process = _invoke_all(path)  # the run lock was released too: this is not refused
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    _assert_artifacts_match_the_lock(config.artifacts)


def test_a_build_in_another_workdir_on_the_same_docker_host_keeps_its_container(
    remote_config, docker_engine: DockerEngine, pulsar2_image: str, tmp_path: Path
) -> None:
    """Our leftover cleanup once stopped every clip-axera container on the host, another user's build too."""
    config, _ = remote_config()
    labels = {"clip-axera.workdir": str(tmp_path / "another workdir"), "clip-axera.controller": "elsewhere"}
    with contextlib.closing(docker_engine.client()) as client:
        other = client.containers.run(pulsar2_image, ["sleep", "120"], detach=True, labels=labels)
        try:
            outcome = run(config, GRAPH, RunRequest(targets=("compile",), only=True, force=True))[-1]
            assert outcome.outcome is Outcome.RAN, outcome.summary
            other.reload()
            assert other.status == "running"
        finally:
            other.remove(force=True)


def test_killed_invoke_all_then_a_plain_invoke_all_finishes_up_to_date(
    remote_config, docker_engine: DockerEngine, build_host_workdir: Path, standin_pulsar2
) -> None:
    config, path = remote_config()
    standin_pulsar2(sleep=60)
    process = _invoke_all(path)
    orphan = _wait_for_build(docker_engine, build_host_workdir)
    os.killpg(process.pid, signal.SIGKILL)  # no cleanup at all: the container keeps running on the host
    process.wait(30)
    assert orphan in _build_containers(docker_engine, build_host_workdir, status="running")

    standin_pulsar2(sleep=0)
    rerun = _invoke_all(path)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    assert "left by an interrupted build" in output and orphan in output
    assert orphan not in _build_containers(docker_engine, build_host_workdir)
    assert not (config.artifacts / ".tmp").exists()
    again = _invoke_all(path)
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and output.count("up to date") >= len(ALL_STAGES), output
    _assert_artifacts_match_the_lock(config.artifacts)


def test_two_controllers_compiling_on_one_build_host_take_turns(
    remote_config, build_host_workdir: Path, standin_pulsar2, tmp_path: Path
) -> None:
    import shutil

    first, _ = remote_config()
    other = tmp_path / "second controller"
    shutil.copytree(first.artifacts, other)
    second = first.model_copy(update={"artifacts": other})
    standin_pulsar2(sleep=1)
    outcomes: dict[str, Outcome] = {}

    def compile_with(name: str, config: PipelineConfig) -> None:
        result = run(config, GRAPH, RunRequest(targets=("compile",), force=True, only=True))
        outcomes[name] = result[-1].outcome

    threads = [threading.Thread(target=compile_with, args=(n, c)) for n, c in (("a", first), ("b", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert outcomes == {"a": Outcome.RAN, "b": Outcome.RAN}
    events = [line.split() for line in (build_host_workdir / "standin-builds.log").read_text().splitlines()]
    assert len(events) == 8  # two encoders, two controllers, a start and an end each
    running = 0
    for kind, _, _ in sorted(events, key=lambda e: float(e[2])):
        running += 1 if kind == "start" else -1
        assert running <= 1, "two builds ran at once on the build host"


def test_a_stale_build_lock_is_taken_over_and_a_live_one_waited_for(remote_config, tmp_path: Path) -> None:
    config, _ = remote_config(command_timeout=3)
    transport = SshTransport.connect("mac", config.host("mac"))
    try:
        lock = Path(config.host("mac").workdir) / ".build.lock"
        lock.mkdir()
        (lock / "pid").write_text("999999")  # a holder killed without its trap
        with exclusive(transport, ".build.lock", 3):
            assert (lock / "pid").read_text().strip() != "999999"
            waits: list[str] = []
            with pytest.raises(HostError, match="still holds"), exclusive(transport, ".build.lock", 2, waits.append):
                pass
            assert waits and "waiting for" in waits[0]
        assert not lock.exists()
    finally:
        transport.close()


def _drop_connection_after(transport: SshTransport, fraction: float):
    """A progress callback that cuts the SSH connection once `fraction` of the bytes went through."""

    dropped = []

    def progress(done: int, total: int) -> None:
        if done >= fraction * total and not dropped:
            dropped.append(done)
            transport._conn.client.get_transport().sock.shutdown(socket.SHUT_RDWR)

    return progress


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_a_connection_dropped_mid_transfer_is_retried_and_verified(
    remote_config, tmp_path: Path, monkeypatch, direction: str
) -> None:
    monkeypatch.setattr(openssh, "available", lambda: False)  # the SFTP path: the drop hits paramiko
    config, _ = remote_config(retries=2)
    transport = SshTransport.connect("mac", config.host("mac"))
    data = tmp_path / "model.bin"
    data.write_bytes(os.urandom(3_000_000))
    remote = transport.path("model.bin")
    try:
        drop = _drop_connection_after(transport, 0.4)
        if direction == "upload":
            summary = upload(transport, {data: remote}, progress=drop)
            assert summary.digests[remote] == sha256_file(data)
            assert sha256_file(Path(remote)) == sha256_file(data)
        else:
            upload(transport, {data: remote})
            target = tmp_path / "back.bin"
            assert download(transport, remote, target, progress=drop) == sha256_file(data)
            assert target.read_bytes() == data.read_bytes()
        assert not [p for p in Path(transport.workdir).iterdir() if ".tmp-" in p.name]
        assert transport.run("true").ok  # reconnected
    finally:
        transport.close()


def test_a_device_that_stays_away_fails_fetch_clearly_and_the_next_run_resumes(
    tiny_pipeline, ssh_server: SshServer, tmp_path: Path, monkeypatch
) -> None:
    """A device rebooting mid-fetch: every retry fails, fetch fails with the reason and keeps nothing
    half-written; once the device is back, a plain run finishes the fetch."""
    monkeypatch.setattr(openssh, "available", lambda: False)
    config = tiny_pipeline(hosts={"pi": ssh_server.host_entry(tmp_path / "pi", retries=1)}, device={"host": "pi"})
    real_put = SshTransport.put

    def rebooting_put(self, local: Path, remote: str, progress=None) -> None:
        self._conn.client.get_transport().sock.shutdown(socket.SHUT_RDWR)
        real_put(self, local, remote, progress)

    monkeypatch.setattr(SshTransport, "put", rebooting_put)
    failed = run(config, GRAPH, RunRequest(targets=("fetch",), only=True))[-1]
    assert failed.outcome is Outcome.FAILED and "connection" in failed.summary, failed.summary
    assert not [p for p in (tmp_path / "pi").rglob("*") if ".tmp-" in p.name]
    monkeypatch.setattr(SshTransport, "put", real_put)
    resumed = run(config, GRAPH, RunRequest(targets=("fetch",), only=True))[-1]
    assert resumed.outcome is Outcome.RAN, resumed.summary
    manifest = json.loads((config.artifacts / "fetch/manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert sha256_file(device_set(tmp_path / "pi" / "models") / name) == entry["sha256"]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs: a real filesystem that fills up."""
    mount = tmp_path / "tiny disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("size", [3_000_000, openssh.STREAM_MIN_BYTES + 1], ids=["sftp", "ssh-stream"])
def test_a_full_disk_on_the_host_is_named_and_leaves_nothing_behind(
    remote_config, tiny_disk: Path, tmp_path: Path, size: int
) -> None:
    config, _ = remote_config(retries=1)
    transport = SshTransport.connect("mac", config.host("mac"))
    data = tmp_path / "model.bin"
    data.write_bytes(os.urandom(size))
    try:
        with pytest.raises(HostError) as failure:
            upload(transport, {data: f"{tiny_disk}/model.bin"})
        assert "could not write model.bin" in str(failure.value) and "df -h" in str(failure.value)
        assert list(tiny_disk.iterdir()) == []  # no temporary file, no partial file
        assert transport.run("true").ok
    finally:
        transport.close()


def test_too_little_disk_on_the_build_host_fails_compile_before_uploading(remote_config) -> None:
    config, _ = remote_config(min_free_gb=1_000_000)
    before = (config.artifacts / "compile/compiled.json").read_bytes()
    outcome = run(config, GRAPH, RunRequest(targets=("compile",), only=True))[-1]
    assert outcome.outcome is Outcome.FAILED
    assert "GB free" in outcome.summary and "min_free_gb" in outcome.summary
    assert (config.artifacts / "compile/compiled.json").read_bytes() == before


def test_a_lock_left_without_a_pid_is_reported_at_once_with_the_command_that_clears_it(tmp_path: Path) -> None:
    lock = tmp_path / "work" / ".lock"
    lock.mkdir(parents=True)
    transport = LocalTransport("pi", str(tmp_path / "work"))
    started = time.monotonic()
    with pytest.raises(HostError, match=r"held by no process.*rm -rf .*\.lock"), exclusive(transport, ".lock", 600):
        pass
    assert time.monotonic() - started < 60 and lock.is_dir()  # not the 600 s wait, even on a loaded machine


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to run as another user")
def test_a_holder_another_user_owns_is_alive_not_stale() -> None:
    """kill -0 on another user's live process fails with EPERM: that holder is alive, its lock not taken."""
    with tempfile.TemporaryDirectory() as folder:  # pytest's tmp_path is private to root
        Path(folder).chmod(0o777)
        _another_users_lock_is_waited_for(Path(folder) / ".lock")


def _another_users_lock_is_waited_for(lock: Path) -> None:
    lock.mkdir()
    (lock / "pid").write_text(str(os.getpid()))  # this root-owned test process: alive
    script = remote_lock._SCRIPT.format(lock=str(lock), wait=2, pid_wait=remote_lock.PID_WAIT_S)
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.stdout.split() == ["WAITING", str(os.getpid()), "TIMEOUT"], result
    assert (lock / "pid").read_text() == str(os.getpid())


def test_a_full_disk_during_export_fails_the_stage_in_one_line_and_leaves_nothing_half_written(
    tiny_disk: Path, tmp_path: Path
) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tiny_disk / "artifacts")), encoding="utf-8")
    outcome = run(load_config(path), GRAPH, RunRequest(targets=("export",)))[-1]
    assert outcome.outcome is Outcome.FAILED
    assert outcome.summary.startswith("No space left on device"), outcome.summary
    assert "free space on that disk" in outcome.summary
    assert not (tiny_disk / "artifacts" / ".tmp").exists() and not (tiny_disk / "artifacts" / "export").exists()


@pytest.mark.parametrize("damaged", ["image_encoder.onnx", "vocab"])
def test_a_same_size_damaged_model_or_table_stops_the_server_at_start_in_one_line(
    built_artifacts: Path, tmp_path: Path, damaged: str
) -> None:
    models = tmp_path / "models"
    shutil.copytree(device_set(built_artifacts.parent / "device" / "models").resolve(), models)
    target = models / damaged if damaged.endswith(".onnx") else next((models / damaged).glob("*.npy"))
    data = bytearray(target.read_bytes())
    data[:16] = b"\xff" * 16  # same size: only --verify-models' hashing would notice before loading
    target.write_bytes(bytes(data))
    result = subprocess.run(
        [sys.executable, "-m", "runtime.server", "--models", str(models), "--port", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: {target}: "), result.stderr
    assert "invoke fetch --force" in result.stderr


def test_an_unreadable_photo_in_the_calibration_folder_fails_the_stage_in_one_line(tiny_pipeline, tmp_path) -> None:
    photos = tmp_path / "photos"
    shutil.copytree(REPO / "data" / "images", photos, ignore=shutil.ignore_patterns("large"))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    config = tiny_pipeline(calibrate={"images": str(photos), "image_count": 100})
    outcome = run(config, GRAPH, RunRequest(targets=("calibrate",), only=True))[-1]
    assert outcome.outcome is Outcome.FAILED
    assert outcome.summary.startswith(f"{photos / 'broken.jpg'}: not a readable image"), outcome.summary


def test_credentials_are_never_readable_by_others_not_even_while_uploading(tmp_path: Path, monkeypatch) -> None:
    """The file was uploaded, then chmodded: for a moment it was world-readable."""
    transport = LocalTransport("pi", str(tmp_path / "work"))
    seen: list[tuple[int, int]] = []
    real_put = LocalTransport.put

    def watching_put(self, local: Path, remote: str, progress=None) -> None:
        real_put(self, local, remote, progress)
        seen.append((Path(remote).stat().st_mode & 0o777, Path(remote).parent.stat().st_mode & 0o777))

    monkeypatch.setattr(LocalTransport, "put", watching_put)
    remote = Path(serving._put_auth(transport, "sd:secret"))
    assert seen and all(file_mode & 0o077 == 0 or folder_mode & 0o077 == 0 for file_mode, folder_mode in seen)
    assert remote.stat().st_mode & 0o777 == 0o600 and remote.read_text() == "sd:secret\n"
    assert [p.name for p in remote.parent.iterdir()] == [remote.name]
