"""compile on a build host and fetch to a device, over a real sshd on 127.0.0.1.

The build host runs a real Docker Engine (a private dockerd) reached over SSH as the docker CLI reaches
one (`docker system dial-stdio`), with a stand-in Pulsar2 image (Pulsar2 cannot run here); everything
else is real: Fabric, SFTP, host-key checks, checksums, the generated config, the containers.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import time
from pathlib import Path

import docker
import paramiko
import pytest

from deploy.device_runtime import locked_versions
from pipeline.graph import StageGraph
from pipeline.hosts import openssh
from pipeline.hosts.ssh import SshTransport
from pipeline.hosts.sync import upload
from pipeline.records import read_records
from pipeline.runner import Outcome, RunRequest, StageOutcome, plan, run
from pipeline.uptodate import Status
from stages import ALL_STAGES
from stages.config import PipelineConfig
from tests.dockerd import DockerEngine
from tests.helpers import device_set
from tests.sshd import SshServer
from toolchains import pulsar2_build

pytestmark = pytest.mark.slow  # minutes of sshd, docker stand-in and device runs: `-m 'not slow'` skips

GRAPH = StageGraph(ALL_STAGES)
# The remote core runs under both: zsh is a Mac's login shell, and sshd hands it every command we send.
BOTH_SHELLS = pytest.mark.parametrize("login_shell", ["bash", "zsh"])


@pytest.fixture
def remote(
    tiny_pipeline, ssh_host: SshServer, standin_pulsar2, docker_engine, build_host_workdir, device_workdir, tmp_path
):
    """A config whose compile runs with Pulsar2 on `mac` (sshd) and whose fetch goes to `pi` (sshd)."""

    def make(
        mac: dict | None = None, pi: dict | None = None, device: dict | None = None, **stage_overrides: dict
    ) -> PipelineConfig:
        hosts = {
            "mac": ssh_host.host_entry(build_host_workdir, **{"docker_socket": docker_engine.socket, **(mac or {})}),
            "pi": ssh_host.host_entry(device_workdir(tmp_path / "pi device"), **(pi or {})),
        }
        stages = {"compile": {"target": "pulsar2", "host": "mac"}}
        for stage, values in stage_overrides.items():
            stages.setdefault(stage, {}).update(values)
        return tiny_pipeline(hosts=hosts, device={"host": "pi", **(device or {})}, **stages)

    return make


def _run(config: PipelineConfig, stage: str, **request: object) -> StageOutcome:
    outcomes = run(config, GRAPH, RunRequest(targets=(stage,), **request))
    return {o.stage: o for o in outcomes}[stage]


def _report(config: PipelineConfig) -> dict:
    return json.loads((config.artifacts / "compile/compiled.json").read_text())


@BOTH_SHELLS
def test_compile_on_the_build_host_downloads_verified_axmodels(remote, tmp_path: Path) -> None:
    config = remote()
    outcome = _run(config, "compile")
    assert outcome.outcome is Outcome.RAN, outcome.summary
    report = _report(config)
    assert report["target"] == "pulsar2" and report["host"] == "mac"
    assert sorted(report["transfers"]["uploaded"]) == sorted(
        str(tmp_path / "build host" / p)
        for p in (
            "models/image_encoder.onnx",
            "models/text_encoder.onnx",
            "calibration/pixel_values.tar",
            "calibration/input_ids.tar",
            "configs/image_encoder.json",
            "configs/text_encoder.json",
        )
    )
    for name in ("image_encoder", "text_encoder"):
        model = report["models"][name]
        assert (config.artifacts / "compile" / f"{name}.axmodel").is_file()
        # The Cosin column's last row, from the saved table of an EndToEnd analysis (not the MSE beside it).
        assert model["cosine"] == pytest.approx(0.9987)
        assert "EndToEnd Reference" in model["cosine_source"]
        assert "quant/debug/precision_analysis_table.txt" in model["cosine_source"]
        layers = model["precision"]["layers"]
        assert len(layers) > 10 and all(0 < layer["cosine"] <= 1 and layer["mse"] is not None for layer in layers)
        assert layers[-1]["cosine"] == model["cosine"] and len(model["worst_layers"]) == 5
        assert "Precision Table" in (config.artifacts / "compile" / f"{name}.precision.txt").read_text()
        assert "fuse 1 subgraph" in (config.artifacts / "compile" / f"{name}.build.log").read_text()
        config_json = json.loads((config.artifacts / "compile" / f"{name}.pulsar2.json").read_text())
        assert config_json["quant"]["input_configs"][0]["calibration_format"] == "Numpy"


def test_second_run_transfers_nothing(remote) -> None:
    config = remote()
    assert _run(config, "compile").outcome is Outcome.RAN
    assert _run(config, "compile").outcome is Outcome.UP_TO_DATE
    forced = _run(config, "compile", force=True, only=True)
    assert forced.outcome is Outcome.RAN
    assert _report(config)["transfers"]["uploaded"] == []
    assert len(_report(config)["transfers"]["unchanged"]) == 6


@BOTH_SHELLS
def test_fetch_to_the_device_over_ssh_then_nothing_to_send(remote, tmp_path: Path) -> None:
    config = remote()
    first = _run(config, "fetch")
    assert first.outcome is Outcome.RAN, first.summary
    device = device_set(tmp_path / "pi device" / "models")
    assert (device / "image_encoder.axmodel").is_file() and (device / "tokenizer.json").is_file()
    assert json.loads((device / "manifest.json").read_text())["compile"]["target"] == "pulsar2"
    again = _run(config, "fetch", force=True, only=True)
    assert again.outcome is Outcome.RAN and " 0 sent" in again.summary


def _assert_failed_and_kept(config: PipelineConfig, stage: str, *fragments: str) -> None:
    before = (config.artifacts / "compile/compiled.json").read_bytes()
    outcome = _run(config, stage)
    assert outcome.outcome is Outcome.FAILED
    for fragment in fragments:
        assert fragment in outcome.summary, outcome.summary
    assert (config.artifacts / "compile/compiled.json").read_bytes() == before
    assert not (config.artifacts / ".tmp").exists()


def test_authentication_failure_is_clear(remote, ssh_server: SshServer) -> None:
    config = remote(mac={"key": str(ssh_server.other_key)})
    _assert_failed_and_kept(config, "compile", "authentication failed", "authorized_keys")


def test_connection_refused_is_clear(remote) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    config = remote(mac={"port": closed_port, "retries": 1})
    _assert_failed_and_kept(config, "compile", f"cannot connect to root@127.0.0.1:{closed_port}", "tried 2 times")


def test_unknown_host_key_is_refused_unless_trusted(remote, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    config = remote(mac={"known_hosts": str(empty)})
    _assert_failed_and_kept(config, "compile", "host key", "not in known_hosts", "trust_new_host_key")
    trusting = remote(mac={"known_hosts": str(empty), "trust_new_host_key": True})
    assert _run(trusting, "compile").outcome is Outcome.RAN


def test_a_trusted_new_host_key_is_remembered_and_a_changed_one_refused_after(
    remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """paramiko's AutoAddPolicy kept the key in memory only: a changed key was then accepted silently."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    trusting = remote(mac={"known_hosts": None, "trust_new_host_key": True})
    assert _run(trusting, "compile").outcome is Outcome.RAN
    known = home / ".ssh" / "known_hosts"
    saved = known.read_text().split()
    assert saved[0].startswith("[127.0.0.1]:") and known.stat().st_mode & 0o777 == 0o600
    other = paramiko.RSAKey.generate(1024)  # the host "reinstalled": another key under the same name
    known.write_text(f"# mine\n{saved[0]} {other.get_name()} {other.get_base64()}\n")
    refused = _run(trusting, "compile", force=True)
    assert refused.outcome is Outcome.FAILED and "does not match known_hosts" in refused.summary
    assert known.read_text().startswith("# mine\n")


def test_a_known_hosts_file_that_does_not_exist_is_an_error(remote, tmp_path: Path) -> None:
    config = remote(mac={"known_hosts": str(tmp_path / "nowhere"), "trust_new_host_key": True})
    _assert_failed_and_kept(config, "compile", "hosts.mac.known_hosts", "does not exist")


def test_missing_image_names_docker_load(remote) -> None:
    config = remote(compile={"pulsar2": {"image": "pulsar2:4.0"}})
    _assert_failed_and_kept(config, "compile", "docker image pulsar2:4.0 is not loaded", "docker load")


def test_docker_cli_not_found(remote) -> None:
    _assert_failed_and_kept(remote(mac={"docker": "/nowhere/docker"}), "compile", "/nowhere/docker not found")


def test_an_engine_that_is_not_running_is_named_with_its_fix(remote, tmp_path: Path) -> None:
    config = remote(mac={"docker_socket": str(tmp_path / "no-engine.sock")})
    _assert_failed_and_kept(config, "compile", "Docker's engine is not reachable", "start Docker")


def test_compiler_failure_shows_the_log_tail_and_keeps_the_previous_model(remote, standin_pulsar2) -> None:
    config = remote()
    assert _run(config, "compile").outcome is Outcome.RAN
    axmodel = (config.artifacts / "compile/image_encoder.axmodel").read_bytes()
    standin_pulsar2(exit_code=1)
    outcome = _run(config, "compile", force=True, only=True)
    assert outcome.outcome is Outcome.FAILED
    assert "pulsar2 build of image_encoder failed (exit 1)" in outcome.summary
    assert "RuntimeError: compilation failed" in outcome.summary
    assert (config.artifacts / "compile/image_encoder.axmodel").read_bytes() == axmodel


def test_a_final_cosine_of_0_61_fails_compile_naming_it_and_the_worst_layers(remote, standin_pulsar2) -> None:
    standin_pulsar2(final_cosine=0.61)
    _assert_failed_and_kept(remote(), "compile", "image_encoder: cosine 0.61000 < 0.98", "worst layers: ")


def test_without_the_saved_table_the_wrapped_80_column_log_is_read(remote, standin_pulsar2) -> None:
    standin_pulsar2(save_table=False)
    config = remote()
    assert _run(config, "compile").outcome is Outcome.RAN
    model = _report(config)["models"]["text_encoder"]
    assert model["cosine"] == pytest.approx(0.9987) and "from build log" in model["cosine_source"]
    log_lines = (config.artifacts / "compile/text_encoder.build.log").read_text().splitlines()
    table_lines = [line for line in log_lines if line.startswith(("│", "┃"))]
    assert table_lines and max(len(line) for line in table_lines) <= 80  # rich wrapped the cells


def test_a_build_dir_the_ssh_user_cannot_remove_is_cleared_through_docker(
    remote, ssh_server: SshServer, build_host_workdir: Path
) -> None:
    config = remote()
    assert _run(config, "compile").outcome is Outcome.RAN
    leftover = build_host_workdir / "build/image_encoder/leftover.txt"
    leftover.write_text("written as root by an older build")
    # A Linux build host where an older build wrote build/ as root: the SSH user's rm is refused.
    refusing_rm = ssh_server.bin_dir / "rm"
    refusing_rm.write_text(
        '#!/bin/sh\nfor a in "$@"; do case "$a" in */build/*) echo "rm: cannot remove \'$a\': Permission denied" >&2;'
        ' exit 1;; esac; done\nexec /bin/rm "$@"\n'
    )
    refusing_rm.chmod(0o755)
    try:
        outcome = _run(config, "compile", force=True, only=True)
    finally:
        refusing_rm.unlink()
    assert outcome.outcome is Outcome.RAN, outcome.summary
    assert not leftover.exists()  # a root container removed the folder


def test_killed_build_points_at_docker_memory(remote, standin_pulsar2) -> None:
    standin_pulsar2(exit_code=137)
    _assert_failed_and_kept(remote(), "compile", "was killed (exit 137)", "Docker Desktop > Settings > Resources")


def test_a_build_the_kernel_kills_for_memory_says_so_from_docker(remote, standin_pulsar2) -> None:
    """A real OOM: the build allocates past the container's memory cap; Docker reports OOMKilled."""
    standin_pulsar2(allocate_mb=400)
    config = remote(compile={"pulsar2": {"memory_limit_gb": 0.125}})
    _assert_failed_and_kept(config, "compile", "ran out of memory (Docker says OOMKilled)", "0.125 GB")


def test_corrupted_upload_is_caught_by_checksum(remote, monkeypatch: pytest.MonkeyPatch) -> None:
    real_put = SshTransport.put

    def corrupting_put(self, local: Path, remote_path: str, progress=None) -> None:
        real_put(self, local, remote_path, progress)
        self.run(f"printf x >> '{remote_path}'")

    monkeypatch.setattr(openssh, "available", lambda: False)  # the SFTP path
    monkeypatch.setattr(SshTransport, "put", corrupting_put)
    _assert_failed_and_kept(remote(), "compile", "arrived corrupted", "sha256")


@BOTH_SHELLS
def test_uploads_stream_through_the_ssh_client_hashing_both_ends(remote, monkeypatch, tmp_path: Path) -> None:
    calls = []
    real_stream = openssh.stream_put
    monkeypatch.setattr(openssh, "stream_put", lambda *a, **k: calls.append(a[1].name) or real_stream(*a, **k))
    monkeypatch.setattr(SshTransport, "put", lambda *a, **k: pytest.fail("SFTP used although ssh is here"))
    config = remote()
    transport = SshTransport.connect("pi", config.host("pi"))
    try:
        data = tmp_path / "weights.bin"
        data.write_bytes(bytes(range(256)) * (openssh.STREAM_MIN_BYTES // 256 + 1))
        marker = tmp_path / "executed"
        target = transport.path(f'a dir/it\'s "w" $(touch {marker}) `touch {marker}`.bin')  # quoted, never run
        summary = upload(transport, {data: target})
        assert calls == ["weights.bin"] and summary.bytes_sent == data.stat().st_size
        assert transport.sha256([target]) == summary.digests
        assert Path(target).read_bytes() == data.read_bytes() and not marker.exists()
    finally:
        transport.close()


def test_a_failing_ssh_client_falls_back_to_sftp(remote, monkeypatch, tmp_path: Path, caplog) -> None:
    real_command = openssh.ssh_command

    def refused_port(host) -> list[str]:  # the ssh client cannot connect; Fabric's connection still works
        command = real_command(host)
        command[command.index("-p") + 1] = "1"
        return command

    monkeypatch.setattr(openssh, "ssh_command", refused_port)
    config = remote()
    transport = SshTransport.connect("pi", config.host("pi"))
    try:
        data = tmp_path / "weights.bin"
        data.write_bytes(b"w" * openssh.STREAM_MIN_BYTES)
        summary = upload(transport, {data: transport.path("weights.bin")})
        assert summary.sent == (transport.path("weights.bin"),)
        assert "using SFTP" in caplog.text
    finally:
        transport.close()


def test_host_flag_overrides_the_configured_build_host(remote) -> None:
    config = remote().with_host("compile", "local")
    assert config.stages.compile.host == "local"
    with pytest.raises(Exception, match="unknown host 'nas'"):
        config.with_host("compile", "nas")


@BOTH_SHELLS
def test_smoke_test_on_the_device_runs_the_axmodels_through_axengine(remote, tmp_path: Path) -> None:
    lock_file = tmp_path / "pi device" / "ax650.lock"
    config = remote(device={"npu_lock": str(lock_file)}, **{"smoke-test": {"runs": 3}})
    outcome = _run(config, "smoke-test")
    assert outcome.outcome is Outcome.RAN, outcome.summary
    report = json.loads((config.artifacts / "smoke-test/devices/pi/measurements.json").read_text())
    assert report["npu_lock"] == str(lock_file) and lock_file.is_file()  # held while on the NPU
    for part in ("image", "text"):
        encoder = report["encoders"][part]
        assert encoder["load_s"] > 0 and encoder["resident_mb"] >= 0  # what the encoder takes from SD's share
        assert encoder["backend"] == "axengine" and encoder["provider"] == "AxEngineExecutionProvider"
        assert encoder["model"].endswith(".axmodel")
        assert encoder["cosine_min"] > 0.9999  # the stand-in "compiles" by copying the float model
        assert encoder["latency_ms"]["runs"] == 3 and encoder["latency_ms"]["p95"] >= encoder["latency_ms"]["p50"]
    assert report["encoders"]["text"]["input_dtype"] == "int32"
    assert report["peak_rss_mb"] > 0
    locked = locked_versions()  # the device venv runs exactly the runtime lock's versions
    assert {name: report["packages"][name] for name in ("numpy", "onnxruntime", "tokenizers")} == {
        name: locked[name] for name in ("numpy", "onnxruntime", "tokenizers")
    }
    again = _run(config, "smoke-test", force=True, only=True)
    assert again.outcome is Outcome.RAN  # the device virtualenv is reused


def test_smoke_test_reports_a_provider_the_device_lacks(remote) -> None:
    config = remote(**{"smoke-test": {"runs": 1, "provider": "NoSuchExecutionProvider"}})
    outcome = _run(config, "smoke-test")
    assert outcome.outcome is Outcome.FAILED
    assert "provider NoSuchExecutionProvider is not available here" in outcome.summary


def test_smoke_test_fails_below_the_cosine_bar(remote) -> None:
    config = remote(**{"smoke-test": {"runs": 1, "min_cosine": 1.0}})
    outcome = _run(config, "smoke-test")
    assert outcome.outcome is Outcome.FAILED and "encoder cosine" in outcome.summary


@BOTH_SHELLS
def test_serve_on_the_device_in_the_background_then_status_and_stop(remote, capsys) -> None:
    import base64

    import httpx

    from commands.serving import ServeRequest, start_on_devices, status_on_devices, stop_on_devices
    from pipeline.errors import PipelineError
    from tests.loopback import free_port

    config = remote()
    with pytest.raises(PipelineError, match="invoke fetch --host pi"):
        start_on_devices(config, ServeRequest(port=free_port()))
    assert _run(config, "fetch").outcome is Outcome.RAN
    port = free_port()
    lock_file = str(Path(config.host("pi").workdir) / "ax650.lock")
    request = ServeRequest(port=port, api_auth="sd:pa ss$(id)", npu_lock=lock_file, unload_after=600)
    start_on_devices(config, request)
    try:
        assert status_on_devices(config)
        with pytest.raises(PipelineError, match="already runs") as running:
            start_on_devices(config, ServeRequest(port=port))
        assert "`invoke serve --host pi --stop`" in str(running.value.hint)  # the device named, not `...`
        url = f"http://127.0.0.1:{port}"
        health = httpx.get(f"{url}/healthz").json()
        assert health["backend"] == "axengine"  # the .axmodel files, via axengine
        assert health["npu"]["lock_file"] == lock_file and health["image_encoder"]["unload_after_s"] == 600
        image = base64.b64encode(Path("data/images/cat.jpg").read_bytes()).decode()
        body = {"image": image}
        assert httpx.post(f"{url}/sdapi/v1/interrogate", json=body, timeout=60).status_code == 401
        answer = httpx.post(f"{url}/sdapi/v1/interrogate", json=body, auth=("sd", "pa ss$(id)"), timeout=60)
        assert answer.status_code == 200 and answer.json()["caption"]
        pid = (Path(config.host("pi").workdir) / "serve.pid").read_text().strip()
        assert "pa ss" not in Path(f"/proc/{pid}/cmdline").read_text()  # the password is not on a command line
        assert os.getsid(int(pid)) == int(pid)  # setsid: its own session, no SIGHUP when SSH's ends
    finally:
        stop_on_devices(config)
    assert not status_on_devices(config)
    assert "pa ss" not in capsys.readouterr().out
    with pytest.raises(PipelineError, match="systemd does not run on this host"):  # this machine has no systemd
        start_on_devices(config, ServeRequest(port=free_port()), as_service=True)


def test_a_server_that_dies_at_start_fails_the_start_though_another_answers_on_its_port(remote, serve) -> None:
    """Another server holds the port: ours exits at bind, and the one answering /healthz is not ours."""
    from commands.serving import ServeRequest, start_on_devices, status_on_devices
    from pipeline.errors import PipelineError

    port = serve().base_url.port
    config = remote()
    assert _run(config, "fetch").outcome is Outcome.RAN
    with pytest.raises(PipelineError, match="the server did not come up") as raised:
        start_on_devices(config, ServeRequest(port=port))
    assert f"cannot listen on 127.0.0.1:{port}" in str(raised.value)
    assert not status_on_devices(config)


@pytest.mark.parametrize("login_shell", ["zsh"])
def test_no_engine_on_a_mac_names_docker_desktop_s_user_and_login(remote, ssh_host: SshServer, tmp_path: Path) -> None:
    """Docker Desktop serves only the user logged in at the Mac: the SSH user must be that one."""
    uname = ssh_host.bin_dir / "uname"  # this host answers as macOS does
    uname.write_text('#!/bin/sh\n[ "$1" = -s ] && echo Darwin || exec /bin/uname "$@"\n')
    uname.chmod(0o755)
    try:
        config = remote(mac={"docker_socket": str(tmp_path / "no-engine.sock")})
        _assert_failed_and_kept(
            config, "compile", "is Docker Desktop running", f"log in at the Mac as {ssh_host.user}", "hosts.mac.user"
        )
    finally:
        uname.unlink()


def test_a_port_that_is_not_sshd_is_one_quiet_line(remote, tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys
    import threading

    with socket.socket() as not_ssh:
        not_ssh.bind(("127.0.0.1", 0))
        not_ssh.listen()

        def answer_like_a_web_server() -> None:
            for _ in range(3):
                try:
                    peer, _ = not_ssh.accept()
                except OSError:
                    return
                with peer:
                    peer.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer_like_a_web_server, daemon=True).start()
        remote(mac={"port": not_ssh.getsockname()[1], "retries": 0})
        result = subprocess.run(
            [sys.executable, "-m", "invoke", "compile", "--config", str(tmp_path / "pipeline.yaml")],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=120,
        )
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    errors = [line for line in output if line.startswith("error: ")]
    assert len(errors) == 1 and "no SSH server spoke there" in errors[0] and "tried 1 time;" in errors[0]
    assert not [line for line in output if "paramiko" in line or "Exception" in line or "File " in line]


def test_a_name_that_does_not_resolve_is_not_retried(remote, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from pipeline.errors import HostError

    config = remote(mac={"address": "build-host.invalid", "retries": 3})

    def no_such_name(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)  # no DNS query leaves this machine
    started = time.monotonic()
    with pytest.raises(HostError, match=r"cannot resolve 'build-host\.invalid': Name or service not known"):
        SshTransport.connect("mac", config.host("mac"))
    assert time.monotonic() - started < 1.0  # no backoff: 1 + 2 + 4 s if it were retried


def test_the_build_report_renders_offline_in_headless_chromium(remote, tmp_path: Path) -> None:
    """index.html after a Pulsar2 compile: loads with no network and no console errors, and shows the
    per-layer cosine chart, the latency charts and the captioned photos (a screenshot is kept)."""
    import shutil
    import subprocess

    from commands.report_page import write_index, write_run

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed: apt-get install chromium (bash tests/run.sh installs it)"
    config = remote(**{"smoke-test": {"runs": 20}})
    outcomes = run(config, GRAPH, RunRequest(targets=("smoke-test",)))
    assert {o.outcome for o in outcomes} <= {Outcome.RAN, Outcome.UP_TO_DATE}, outcomes
    write_run(config.artifacts / "reports", outcomes)
    page = write_index(config)
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing to fetch: self-contained
    browser = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--proxy-server=127.0.0.1:9",
        "--enable-logging=stderr",
        "--v=0",
    ]
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "net::ERR" in line]
    assert console_errors == []
    assert 'aria-label="cosine per layer"' in dom.stdout and "<polyline" in dom.stdout
    assert dom.stdout.count('aria-label="latency histogram"') == 2
    assert dom.stdout.count(">runs</text>") == 2 and "operators vs the ax650 operator table" in dom.stdout
    assert dom.stdout.count("data:image/jpeg;base64,") >= 4 and "worst layers:" in dom.stdout
    assert "Picks: device vs float model" in dom.stdout and "same first pick" in dom.stdout
    assert dom.stdout.count('class="device"') >= 2  # the device's captions beside the float model's, marked
    assert not re.search(r"<td[^>]*>True</td>", dom.stdout) and re.search(r"<td[^>]*>pass</td>", dom.stdout)
    shot = tmp_path / "report.png"
    subprocess.run(
        [*browser, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 50_000
    shutil.copy(shot, Path("/tmp/clip-axera-report.png"))  # for a person to look at


def test_the_image_id_is_recorded_and_a_retagged_image_makes_compile_stale(
    remote, docker_engine: DockerEngine, pulsar2_image: str
) -> None:
    config = remote()
    assert _run(config, "compile").outcome is Outcome.RAN
    toolchain = read_records(config.artifacts)["compile"].figures["toolchain"]  # in the lock file
    assert toolchain["image"] == "pulsar2:5.1" and toolchain["image_id"] == pulsar2_image
    assert _run(config, "compile").outcome is Outcome.UP_TO_DATE
    with contextlib.closing(docker_engine.client()) as client:
        assert toolchain["engine_version"] == client.version()["Version"]
        scratch = client.containers.create(pulsar2_image, ["true"])
        try:
            other = scratch.commit("pulsar2", "5.1")  # another image, the same tag
        finally:
            scratch.remove(force=True)
        try:
            decision = {s.name: d for s, d in plan(config, GRAPH, RunRequest(targets=("compile",)))}["compile"]
            assert decision.status is Status.STALE
            assert decision.reasons == (
                f"image pulsar2:5.1 on mac is now {other.id[:19]} (the models were built by {pulsar2_image[:19]})",
            )
            assert _run(config, "compile").outcome is Outcome.RAN
            assert read_records(config.artifacts)["compile"].figures["toolchain"]["image_id"] == other.id
        finally:
            client.images.get(pulsar2_image).tag("pulsar2", "5.1")
            client.images.remove(other.id, force=True)


def test_a_missing_image_is_loaded_from_the_archive_named_here(
    remote, docker_engine: DockerEngine, pulsar2_image: str, tmp_path: Path
) -> None:
    archive = tmp_path / "ax_pulsar2_9.9.tar.gz"
    with contextlib.closing(docker_engine.client()) as client:
        image = client.images.get(pulsar2_image)
        image.tag("pulsar2", "9.9")
        image.reload()  # save() checks the name among the tags it knows
        with gzip.open(archive, "wb", compresslevel=1) as handle:
            for chunk in image.save(named="pulsar2:9.9"):
                handle.write(chunk)
        client.images.remove("pulsar2:9.9")  # the id stays, under pulsar2:5.1
        try:
            config = remote(compile={"pulsar2": {"image": "pulsar2:9.9", "image_archive": str(archive)}})
            outcome = _run(config, "compile")
            assert outcome.outcome is Outcome.RAN, outcome.summary
            assert client.images.get("pulsar2:9.9").id == pulsar2_image
        finally:
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove("pulsar2:9.9")


def test_on_a_linux_engine_the_outputs_are_handed_back_to_the_ssh_user(
    remote, build_host_workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test's SSH user is root; as another user (uid 4321 here) the root container's outputs are chowned."""
    monkeypatch.setattr(pulsar2_build, "_owner", lambda transport, engine: "4321:4321")
    config = remote()
    assert _run(config, "compile").outcome is Outcome.RAN
    built = [p for p in (build_host_workdir / "build").rglob("*")]
    assert built and {(p.stat().st_uid, p.stat().st_gid) for p in built} == {(4321, 4321)}


def test_a_build_host_that_is_away_does_not_hold_up_a_no_op_run(remote, caplog: pytest.LogCaptureFixture) -> None:
    """The image check is one quick try: a sleeping Mac costs a warning, not a minute of retries."""
    import socket

    config = remote()
    assert _run(config, "compile").outcome is Outcome.RAN
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    away = remote(mac={"port": closed_port, "retries": 3})
    started = time.monotonic()
    with caplog.at_level("WARNING"):
        decision = {s.name: d for s, d in plan(away, GRAPH, RunRequest(targets=("compile",)))}["compile"]
    assert time.monotonic() - started < 5
    assert decision.status is Status.UP_TO_DATE
    assert "the Pulsar2 image on mac was not checked" in caplog.text


def test_a_build_that_hangs_is_stopped_at_the_hosts_command_timeout(
    remote, standin_pulsar2, docker_engine: DockerEngine, build_host_workdir: Path
) -> None:
    standin_pulsar2(sleep=120)
    started = time.monotonic()
    _assert_failed_and_kept(remote(mac={"command_timeout": 8}), "compile", "did not end within 8 s", "command_timeout")
    assert time.monotonic() - started < 60
    with contextlib.closing(docker_engine.client()) as client:
        assert client.containers.list(all=True, filters={"label": f"clip-axera.workdir={build_host_workdir}"}) == []
