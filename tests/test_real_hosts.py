"""What the user's real machines do differently from this one's test hosts: a pid file that outlived a
reboot, Docker Desktop's memory and shared folders, `~` in host paths, an NPU lock another user shares."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from commands.serving import SERVER, status_on_devices, stop_on_devices
from pipeline.errors import HostError
from pipeline.hosts.local import LocalTransport
from runtime.npu import NpuLock
from tests.helpers import REPO
from toolchains import docker_desktop

NOBODY = 65534


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """A live process of this user that is not ours: what a stale pid names after a reboot."""
    process = subprocess.Popen(["sleep", "300"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_a_stale_pid_file_naming_another_live_process_is_not_claimed_nor_signalled(
    tiny_pipeline, sleeper: subprocess.Popen, capsys
) -> None:
    config = tiny_pipeline(device={"host": "local"})
    workdir = Path(config.host("local").workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / SERVER.pid_name).write_text(f"{sleeper.pid}\n")
    assert not status_on_devices(config)
    assert "no server runs on local" in capsys.readouterr().out
    stop_on_devices(config)
    assert "no server runs on local" in capsys.readouterr().out
    assert sleeper.poll() is None, "--stop signalled a process that is not our server"
    assert not (workdir / SERVER.pid_name).exists()  # the stale file is gone, the process it named is not


def test_docker_desktop_s_reported_memory_passes_for_the_slider_value_it_stands_for() -> None:
    transport = LocalTransport("mac", tempfile.gettempdir())
    docker_desktop.check_memory(transport, 7.7, 8, desktop=True)  # an "8 GB" slider's MemTotal
    with pytest.raises(HostError, match=r"has 7\.7 GB of memory"):
        docker_desktop.check_memory(transport, 7.7, 8, desktop=False)
    with pytest.raises(HostError) as raised:
        docker_desktop.check_memory(transport, 5.8, 8, desktop=True)
    assert "about 6 GB" in str(raised.value)
    assert "Docker Desktop -> Settings -> Resources -> Memory: 8 GB or more" in str(raised.value)


@pytest.mark.parametrize("settings", ["settings-store.json", "settings.json"])
def test_a_workdir_docker_desktop_does_not_share_is_refused_with_the_setting_to_change(
    settings: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    shared, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    store = tmp_path / "Library/Group Containers/group.com.docker" / settings
    store.parent.mkdir(parents=True)
    key = "FilesharingDirectories" if settings == "settings-store.json" else "filesharingDirectories"
    store.write_text(json.dumps({key: ["/Users", str(shared)]}))
    for folder in (shared / "clip-axera", elsewhere):
        folder.mkdir(parents=True)
    transport = LocalTransport("mac", str(tmp_path))
    docker_desktop.check_shared(transport, str(shared / "clip-axera"))
    with pytest.raises(HostError) as raised:
        docker_desktop.check_shared(transport, str(elsewhere))
    assert f"does not share {elsewhere}" in str(raised.value)
    assert "Docker Desktop -> Settings -> Resources -> File sharing" in str(raised.value)
    assert "hosts.mac.workdir" in str(raised.value)


def test_without_a_settings_file_docker_desktop_s_default_shares_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    transport = LocalTransport("mac", str(tmp_path))
    assert docker_desktop.shared_folders(transport) == docker_desktop.DEFAULT_SHARED
    docker_desktop.check_shared(transport, "/tmp")
    with pytest.raises(HostError, match="does not share /srv/builds"):
        docker_desktop.check_shared(transport, "/srv/builds")


def test_a_tilde_in_any_host_path_setting_is_the_host_user_s_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    transport = LocalTransport("pi", str(tmp_path / "work"))
    assert transport.path("~/sd/models") == f"{tmp_path}/home/sd/models"
    assert transport.path("~") == f"{tmp_path}/home"
    assert transport.path("models") == f"{tmp_path}/work/models"
    assert transport.path("/run/lock/ax650.lock") == "/run/lock/ax650.lock"
    assert transport.expand("~other/x") == "~other/x"  # another user's home is not guessed


def test_fetch_puts_the_models_in_a_models_dir_under_the_home_folder(
    tiny_pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.graph import StageGraph
    from pipeline.runner import Outcome, RunRequest, run
    from stages import ALL_STAGES
    from tests.helpers import device_set

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = tiny_pipeline(device={"host": "local", "models_dir": "~/sd/models"})
    outcome = run(config, StageGraph(ALL_STAGES), RunRequest(targets=("fetch",), force=True, only=True))[-1]
    assert outcome.outcome is Outcome.RAN, outcome.summary
    assert (device_set(tmp_path / "home/sd/models") / "manifest.json").is_file()
    assert not any(part == "~" for path in Path(config.host("local").workdir).rglob("*") for part in path.parts)


@contextlib.contextmanager
def _shared_folder() -> Iterator[Path]:
    """A sticky world-writable folder as /run/lock is (the test's own tmp_path is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="npu-lock-", dir="/tmp"))
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def _as_nobody_can_flock(lock_file: Path) -> bool:
    """Whether another user's process (uid 65534) can open the lock as NpuLock does and flock it."""
    code = (
        "import fcntl, os, pathlib\n"
        "from runtime.npu import NpuLock\n"  # imported while this interpreter's files are readable
        f"os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        f"lock = NpuLock(pathlib.Path({str(lock_file)!r}))\n"
        "fcntl.flock(lock._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    return result.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_the_npu_lock_is_shared_with_a_process_of_another_user() -> None:
    with _shared_folder() as folder:
        made_by_us = folder / "ax650.lock"
        old_umask = os.umask(0o022)
        try:
            NpuLock(made_by_us)
        finally:
            os.umask(old_umask)
        assert made_by_us.stat().st_mode & 0o777 == 0o666  # whatever the umask
        assert _as_nobody_can_flock(made_by_us)
        made_by_sd = folder / "sd.lock"  # SD's own lock file, 0644: only read-only opens for others
        made_by_sd.touch(mode=0o644)
        made_by_sd.chmod(0o644)
        assert _as_nobody_can_flock(made_by_sd)
        lock = NpuLock(made_by_sd)
        fcntl.flock(lock._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it excludes the other process while held
        assert not _as_nobody_can_flock(made_by_sd)


def test_the_service_unit_runs_our_server_restarts_it_and_passes_systemd_analyze(tmp_path: Path) -> None:
    from deploy.service_unit import UNIT, unit_text

    workdir = tmp_path / "pi work"
    python = workdir / "venv/bin/python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    (workdir / "app").mkdir()
    argv = ["--models", str(tmp_path / "100% models"), "--api-auth-file", "/home/$USER/serve.auth"]
    text = unit_text(str(workdir / "app"), str(python), "runtime.server", argv, None)
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start == (
        f'ExecStart="{python}" -m runtime.server --models "{tmp_path}/100%% models" --api-auth-file '
        '"/home/$$USER/serve.auth"'
    )
    assert "Restart=on-failure" in text and "WantedBy=default.target" in text and "User=" not in text
    assert "User=pi" in unit_text(str(workdir / "app"), str(python), "runtime.server", argv, "pi")
    unit = tmp_path / UNIT
    unit.write_text(text)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (tests/run.sh installs Debian's systemd)")
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
