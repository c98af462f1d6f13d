"""A fleet: `devices:` in the config, deploy and smoke-test on every device at once, captioning across them
with Dask distributed, and nginx in front of their servers.

The devices are separate hosts on this machine: each its own real sshd on 127.0.0.1 (its own port, host key
and workdir), reached over the same transport as a Pi; a third points at a port where nothing listens (a
device unplugged). Captioning starts real Dask workers on them over SSH, in the device's runtime virtualenv.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.graph import StageGraph
from pipeline.records import read_records
from pipeline.runner import Outcome, RunRequest, run
from stages import ALL_STAGES, stages_for
from stages.config import PipelineConfig, load_config
from tests.helpers import IMAGES, REPO, tiny_config_dict
from tests.loopback import free_port
from tests.sshd import SshServer, start_sshd

GRAPH = StageGraph(ALL_STAGES)


def _devices_config(write_config, devices: list[dict], hosts: dict | None = None) -> PipelineConfig:
    data = {"hosts": {"a": {"address": "a.local"}, "b": {"address": "b.local"}, **(hosts or {})}, "devices": devices}
    return load_config(write_config(data))


def test_devices_select_by_name_list_or_all(write_config) -> None:
    config = _devices_config(
        write_config, [{"name": "pi1", "host": "a"}, {"name": "pi2", "host": "b", "models_dir": "/srv/sd/models"}]
    )
    assert [d.name for d in config.fleet()] == ["pi1", "pi2"]
    assert [d.name for d in config.with_devices("all").fleet()] == ["pi1", "pi2"]
    assert [d.name for d in config.with_devices("pi2").fleet()] == ["pi2"]
    assert [d.name for d in config.with_devices("pi2, pi1").fleet()] == ["pi2", "pi1"]
    with pytest.raises(ConfigError, match=r"--host pi9: no such device.*pi1, pi2, all"):
        config.with_devices("pi1,pi9")
    fetch = next(s for s in ALL_STAGES if s.name == "fetch")
    params = fetch.params(config)
    assert [(d.name, d.host, d.models_dir) for d in params.devices] == [
        ("pi1", "a", "models"),
        ("pi2", "b", "/srv/sd/models"),
    ]
    assert fetch.host_name(config) == "a,b"
    assert fetch.params(config.with_devices("pi1")) != params  # another selection: another run


def test_one_device_is_a_fleet_of_one_and_a_host_list_makes_more(write_config) -> None:
    config = load_config(write_config({"hosts": {"pi": {"address": "pi.local"}}, "device": {"host": "pi"}}))
    assert [(d.name, d.host) for d in config.fleet()] == [("pi", "pi")]
    two = load_config(
        write_config({"hosts": {"a": {"address": "a"}, "b": {"address": "b"}}, "device": {"models_dir": "m"}})
    ).with_devices("a,b")
    assert [(d.name, d.host, d.models_dir) for d in two.fleet()] == [("a", "a", "m"), ("b", "b", "m")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"device": {"host": "a"}, "devices": [{"name": "x", "host": "b"}]}, "not both"),
        ({"devices": [{"name": "x", "host": "a"}, {"name": "x", "host": "b"}]}, "name 'x' is taken"),
        ({"devices": [{"name": "x", "host": "a"}, {"name": "y", "host": "a"}]}, "one device per host"),
        ({"devices": [{"name": "x", "host": "nas"}]}, r"devices\[0\]\.host 'nas' is not in hosts"),
        ({"devices": [{"name": "../x", "host": "a"}]}, r"devices\.0\.name"),
        ({"devices": [{"host": "a"}]}, r"devices\.0\.name: required key is missing"),
    ],
)
def test_a_wrong_devices_section_is_one_clear_error(write_config, data: dict, message: str) -> None:
    data["hosts"] = {"a": {"address": "a.local"}, "b": {"address": "b.local"}}
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(data))


def test_the_nginx_config_balances_over_every_device(write_config) -> None:
    from commands.serving import nginx_for

    config = _devices_config(write_config, [{"name": "pi1", "host": "a"}, {"name": "pi2", "host": "b", "port": 7861}])
    text = nginx_for(config, "8080")
    assert "least_conn;" in text and "listen 8080;" in text
    assert "server a.local:7860 max_fails=2 fail_timeout=10s;  # pi1" in text
    assert "server b.local:7861 max_fails=2 fail_timeout=10s;  # pi2" in text
    assert "proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;" in text


@pytest.mark.parametrize(
    "address", ["pi.local\n} server { listen 81; root /; autoindex on; }", "a b", "pi;", "host}", "", "'pi'"]
)
def test_an_address_that_is_not_a_host_name_or_ip_is_refused_at_load(write_config, address: str) -> None:
    """It went into --print-nginx as it was: a newline, `;` and `}` added a server block nginx accepted."""
    with pytest.raises(ConfigError, match=r"hosts\.a\.address|hosts\.a: an ssh host needs"):
        _devices_config(write_config, [{"name": "pi1", "host": "a"}], hosts={"a": {"address": address}})


def test_the_nginx_config_brackets_ipv6_and_resolves_ssh_config_aliases(
    write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from commands.serving import nginx_for

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh/config").write_text("Host garden-pi\n    HostName 192.168.1.23\n    User pi\n")
    hosts = {"a": {"address": "::1"}, "b": {"address": "garden-pi"}, "c": {"address": "[fe80::2]"}}
    devices = [{"name": "pi1", "host": "a"}, {"name": "pi2", "host": "b"}, {"name": "pi3", "host": "c"}]
    text = nginx_for(_devices_config(write_config, devices, hosts=hosts), "8080")
    assert "server [::1]:7860 max_fails" in text and "server [fe80::2]:7860 max_fails" in text
    assert "server 192.168.1.23:7860 max_fails=2 fail_timeout=10s;  # pi2" in text


def test_the_commands_take_a_device_list(tmp_path: Path) -> None:
    from tests.test_cli import _assert_one_line_error, invoke

    config = tmp_path / "pipeline.yaml"
    hosts = {"a": {"address": "a.example"}, "b": {"address": "b.example"}}
    devices = [{"name": "pi1", "host": "a"}, {"name": "pi2", "host": "b", "port": 7870}]
    config.write_text(yaml.safe_dump({"artifacts": str(tmp_path / "artifacts"), "hosts": hosts, "devices": devices}))
    printed = invoke("serve", "--config", str(config), "--print-nginx", "--port", "8080")
    assert printed.returncode == 0, printed.stderr
    assert "server a.example:7860" in printed.stdout and "server b.example:7870" in printed.stdout
    assert "listen 8080;" in printed.stdout
    one = invoke("serve", "--config", str(config), "--host", "pi2", "--print-nginx")
    assert "a.example" not in one.stdout and "b.example:7870" in one.stdout
    shutil.copy(IMAGES / "cat.jpg", tmp_path / "cat.jpg")
    _assert_one_line_error(
        invoke("caption", "--config", str(config), "--images", str(tmp_path), "--host", "pi7"),
        "--host pi7: no such device",
        "pi1, pi2, all",
    )
    _assert_one_line_error(invoke("fetch", "--config", str(config), "--host", "pi1,nas"), "--host nas: no such device")
    _assert_one_line_error(invoke("serve", "--config", str(config), "--port", "http"), "--port takes a port number")
    status = invoke("status", "--config", str(config))
    assert status.returncode == 0, status.stderr
    assert "pi1" in status.stdout and "pi2" in status.stdout and "not fetched" in status.stdout


# ---- real hosts: separate sshds on loopback, real nginx, real Dask workers ----


@pytest.fixture(scope="module")
def device_sshds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SshServer]]:
    started = [start_sshd(tmp_path_factory.mktemp(f"sshd-pi{i}")) for i in (1, 2)]
    try:
        yield [server for _, server in started]
    finally:
        for process, _ in started:
            process.terminate()
            process.wait(10)


@pytest.fixture
def fleet(
    built_artifacts: Path, device_sshds: list[SshServer], device_workdir: Callable[[Path], Path], tmp_path: Path
) -> Callable[..., PipelineConfig]:
    """fleet(unreachable=False, tagger=None) -> a config with devices pi1 and pi2 (own sshd and workdir each),
    and pi3 on a port where nothing listens when asked; with `tagger:` when given; the built tiny-CLIP
    artifacts copied."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(built_artifacts, artifacts, copy_function=shutil.copy2)

    def make(unreachable: bool = False, tagger: str | None = None) -> PipelineConfig:
        data = tiny_config_dict(artifacts)
        if tagger:
            data["tagger"] = {"id": tagger}
        names = ["pi1", "pi2"]
        for name, server in zip(names, device_sshds, strict=True):
            data["hosts"][name] = server.host_entry(device_workdir(tmp_path / f"{name} workdir"))
        if unreachable:
            down = device_sshds[0].host_entry(tmp_path / "pi3 workdir", port=free_port(), connect_timeout=3)
            data["hosts"]["pi3"] = down
            names.append("pi3")
        data["devices"] = [{"name": name, "host": name, "port": free_port()} for name in names]
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return load_config(path)

    return make


@pytest.mark.slow
@pytest.mark.xdist_group("fleet")  # the module's two device sshds, started once
def test_deploy_to_every_device_at_once_and_one_unreachable_stops_none(fleet, tmp_path: Path) -> None:
    config = fleet(unreachable=True)
    outcomes = {o.stage: o for o in run(config, GRAPH, RunRequest(targets=("smoke-test",)))}
    fetch = outcomes["fetch"]
    assert fetch.outcome is Outcome.FAILED
    assert "1 of 3 devices failed: pi3:" in fetch.summary and "--host pi1,pi2" in fetch.summary
    for name in ("pi1", "pi2"):  # the reachable devices got the set all the same
        assert (tmp_path / f"{name} workdir/models/clip-axera/current/manifest.json").is_file()
    assert outcomes["smoke-test"].outcome is Outcome.SKIPPED

    reachable = config.with_host("smoke-test", "pi1,pi2")
    outcomes = {o.stage: o for o in run(reachable, GRAPH, RunRequest(targets=("smoke-test",)))}
    assert outcomes["fetch"].outcome is Outcome.RAN, outcomes["fetch"].summary
    assert "0 sent" in outcomes["fetch"].summary  # already there: only checked
    assert outcomes["smoke-test"].outcome is Outcome.RAN, outcomes["smoke-test"].summary
    records = read_records(config.artifacts)
    assert set(records["fetch"].figures["devices"]) == set(records["smoke-test"].figures["devices"]) == {"pi1", "pi2"}
    assert records["smoke-test"].host == "pi1,pi2"
    for name in ("pi1", "pi2"):
        report = json.loads((config.artifacts / f"smoke-test/devices/{name}/measurements.json").read_text())
        assert report["encoders"]["image"]["cosine_min"] > 0.98
        assert (config.artifacts / f"fetch/devices/{name}/transfer.json").is_file()
    assert run(reachable, GRAPH, RunRequest(targets=("smoke-test",)))[-1].outcome is Outcome.UP_TO_DATE

    from commands.cli import device_rows
    from deploy.device_runtime import locked_versions

    rows = {row[0]: row for row in device_rows(config)}
    assert "not fetched" in rows["pi3"][2] and "cosine" in rows["pi1"][3] and "cosine" in rows["pi2"][3]
    assert f"onnxruntime {locked_versions()['onnxruntime']}" in rows["pi1"][4]  # what the device's venv ran


def _photos(folder: Path, copies: int) -> list[Path]:
    folder.mkdir()
    photos = sorted(IMAGES.glob("*.jpg"))
    for index in range(copies):
        for photo in photos:
            shutil.copy(photo, folder / f"{index}-{photo.name}")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return sorted(folder.glob("*.jpg"))


def _fetched(config: PipelineConfig) -> None:
    outcome = run(config, StageGraph(stages_for(config)), RunRequest(targets=("fetch",)))[-1]
    assert outcome.outcome is Outcome.RAN, outcome.summary


@pytest.mark.slow
@pytest.mark.xdist_group("fleet")  # the module's two device sshds, started once
def test_caption_across_the_fleet_survives_a_worker_killed_mid_run(fleet, tmp_path: Path) -> None:
    from deploy.fleet_caption import TLS_DIR, WORKER, FleetCaptionJob, caption_on_fleet
    from runtime.caption_style import CaptionStyle
    from runtime.captioning import CaptionRun

    config = fleet()
    _fetched(config)
    photos = _photos(tmp_path / "photos", copies=4)
    killed: list[str] = []

    listening: set[tuple[str, int]] = set()

    def on_image(path: Path, progress) -> None:
        if sum(progress.per_device.values()) == 10 and not listening:
            for name in ("pi1", "pi2"):  # what each worker listens on, its HTTP port included
                worker = psutil.Process(int((tmp_path / f"{name} workdir" / WORKER.pid_name).read_text()))
                listening.update(c.laddr for c in worker.net_connections("inet") if c.status == psutil.CONN_LISTEN)
        # once both have captioned (a worker that sets up later may not have by the 20th image)
        if sum(progress.per_device.values()) >= 20 and progress.per_device.get("pi2") and not killed:
            pid = int((tmp_path / "pi2 workdir" / WORKER.pid_name).read_text())
            os.kill(pid, signal.SIGKILL)  # as a device unplugged mid-run, from the scheduler's side
            killed.append(str(pid))

    style = CaptionStyle(prefix=("sks person",), extension=".caption", underscores=True, exclude=("re:.*light.*",))
    run = CaptionRun(tmp_path / "photos", tmp_path / "out", style)  # the style travels to the devices' workers
    summary = caption_on_fleet(config, FleetCaptionJob(run), on_image)
    assert killed
    assert listening and {ip for ip, _ in listening} == {"127.0.0.1"}  # --no-dashboard still bound 0.0.0.0
    assert summary.captioned == len(photos) - 1 and [Path(p).name for p, _ in summary.failed] == ["broken.jpg"]
    lines = [json.loads(line) for line in (tmp_path / "out/captions.jsonl").read_text().splitlines()]
    files = [line["file"] for line in lines]
    assert sorted(files) == sorted(p.name for p in photos if p.name != "broken.jpg")  # each exactly once
    assert {line["device"] for line in lines} == {"pi1", "pi2"}
    captions = [(tmp_path / "out" / Path(f).with_suffix(".caption")).read_text().strip() for f in files]
    assert all(c.startswith("sks person, ") and "light" not in c for c in captions)
    assert all(" " not in label for c in captions for label in c.split(", ")[1:])  # --underscores, on the devices
    for name in ("pi1", "pi2"):  # every worker stopped at the end
        assert not (tmp_path / f"{name} workdir" / WORKER.pid_name).exists()
        assert not (tmp_path / f"{name} workdir" / TLS_DIR).exists()  # the run's key is gone with it

    again = caption_on_fleet(config, FleetCaptionJob(run), lambda *_: None)
    assert again.captioned == 0 and again.skipped == len(photos) - 1  # resumable: nothing twice


@pytest.mark.slow
@pytest.mark.xdist_group("fleet")  # the module's two device sshds, started once
def test_invoke_classify_across_the_fleet_answers_each_image_once_and_prints_no_log_records(
    fleet, tmp_path: Path
) -> None:
    """`invoke classify` where the devices are other machines: Dask on every device, quietly (its own
    records go to a file beside the answers), each device keeping the labels it encoded."""
    from tests.test_cli import invoke

    config = fleet()
    _fetched(config)
    photos = _photos(tmp_path / "photos", copies=2)
    out = tmp_path / "out"
    command = [
        "classify",
        "--config",
        str(tmp_path / "pipeline.yaml"),
        "--images",
        str(tmp_path / "photos"),
        "--out",
        str(out),
    ]
    done = invoke(*command, "--labels", "a photo of text,a photo")
    assert done.returncode == 0, done.stdout + done.stderr
    printed = (done.stdout + done.stderr).splitlines()
    assert not [line for line in printed if "distributed." in line or " INFO " in line or "- INFO -" in line], printed
    assert f"classified {len(photos) - 1}, already done 0, unreadable 1" in done.stdout
    assert (out / "fleet-dask.log").is_file()
    lines = [json.loads(line) for line in (out / "classify.jsonl").read_text().splitlines()]
    assert sorted(line["file"] for line in lines) == sorted(p.name for p in photos if p.name != "broken.jpg")
    assert {line["device"] for line in lines} == {"pi1", "pi2"}
    assert sum(line["text_encodes"] for line in lines) == 4  # each device encodes the two labels once
    assert len((out / "classify.csv").read_text().splitlines()) == len(lines) + 1
    assert not list(out.glob("*.txt"))
    for name in ("pi1", "pi2"):  # each device keeps them beside its set, for the next run
        assert list((tmp_path / f"{name} workdir/models/clip-axera/label-cache").glob("*.npz"))
    again = invoke(*command, "--labels", "a photo of text,a photo")
    assert f"classified 0, already done {len(photos) - 1}" in again.stdout


@pytest.mark.slow
@pytest.mark.xdist_group("fleet")  # the module's two device sshds, started once
def test_invoke_caption_tagger_tags_across_the_fleet_with_the_tagger_fetch_put_on_each_device(
    fleet, tmp_path: Path
) -> None:
    """`tagger:` in the config: fetch puts the compiled tagger in each device's set, and `invoke caption
    --tagger` (no folder) tags on the devices with it, in kohya's style: the same files as the same
    tagger writes here."""
    from tests.test_cli import invoke

    config = fleet(tagger="builtin:tiny-wd-convnext-tagger")
    _fetched(config)
    photos = _photos(tmp_path / "photos", copies=2)
    style = ["--character-first", "--rating", "--spaces", "--threshold", "0.5"]
    command = ["caption", "--config", str(tmp_path / "pipeline.yaml"), "--images", str(tmp_path / "photos")]
    done = invoke(*command, "--out", str(tmp_path / "fleet"), "--tagger", *style)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"captioned {len(photos) - 1}, already done 0, unreadable 1" in done.stdout
    lines = [json.loads(line) for line in (tmp_path / "fleet/captions.jsonl").read_text().splitlines()]
    assert {line["device"] for line in lines} == {"pi1", "pi2"}
    assert {line["tagger"] for line in lines} == {"tiny-wd-convnext-tagger"} and all(
        len(line["ratings"]) == 4 for line in lines
    )

    tagger = tmp_path / "pi1 workdir/models/clip-axera/current/tagger"
    here = invoke(*command, "--out", str(tmp_path / "here"), "--tagger", str(tagger), *style)
    assert here.returncode == 0, here.stdout + here.stderr
    for photo in (p for p in photos if p.name != "broken.jpg"):
        name = photo.with_suffix(".txt").name
        assert (tmp_path / "fleet" / name).read_text() == (tmp_path / "here" / name).read_text(), name


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.mark.slow
@pytest.mark.xdist_group("fleet")  # the module's two device sshds, started once
def test_nginx_in_front_of_the_fleet_serves_a1111_clients_and_skips_a_dead_device(fleet, tmp_path: Path) -> None:
    import base64

    from commands.serving import ServeRequest, nginx_for, start_on_devices, stop_on_devices

    config = fleet()
    _fetched(config)
    start_on_devices(config, ServeRequest())
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    port = free_port()
    (nginx_dir / "nginx.conf").write_text(
        f"user {getpass.getuser()};\npid {nginx_dir}/nginx.pid;\nerror_log {nginx_dir}/error.log;\n"
        "events {}\nhttp {\n"
        f"access_log off;\nclient_body_temp_path {nginx_dir}/body;\nproxy_temp_path {nginx_dir}/proxy;\n"
        f"{nginx_for(config, f'127.0.0.1:{port}')}\n}}\n"
    )
    process = subprocess.Popen([NGINX, "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf"), "-g", "daemon off;"])
    try:
        url = f"http://127.0.0.1:{port}/sdapi/v1/interrogate"
        body = {"image": base64.b64encode((REPO / "data/images/cat.jpg").read_bytes()).decode(), "model": "clip"}
        for _ in range(50):
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        for _ in range(6):
            answer = httpx.post(url, json=body, timeout=60)
            assert answer.status_code == 200 and answer.json()["caption"]
        health = [httpx.get(f"http://127.0.0.1:{d.port}/healthz").json()["queue"]["served"] for d in config.fleet()]
        assert all(served > 0 for served in health)  # least_conn spread the requests over both

        stop_on_devices(config.with_devices("pi2"))  # a device gone: its port refuses
        for _ in range(4):
            answer = httpx.post(url, json=body, timeout=60)
            assert answer.status_code == 200 and answer.json()["caption"]
    finally:
        process.terminate()
        process.wait(10)
        stop_on_devices(config)


def test_an_image_removed_while_the_fleet_captions_is_unreadable_not_the_end_of_the_run(tmp_path: Path) -> None:
    """It ended the run with a FileNotFoundError traceback from reading the images to send."""
    from deploy.fleet_caption import _batches
    from runtime.captioning import CaptionRun, CaptionWriter

    photos = _photos(tmp_path / "set", 1)
    photos[1].unlink()  # gone between listing the folder and sending it
    todo = [(photo, photo.with_suffix(".txt")) for photo in photos]
    skipped: list[Path] = []
    with CaptionWriter.open(CaptionRun(tmp_path / "set")) as writer:
        sent = [image for batch in _batches(todo, writer, skipped.append) for image, _, _ in batch]
    assert sent == [photos[0], *photos[2:]] and skipped == [photos[1]]
    assert [Path(path).name for path, _ in writer.summary.failed] == [photos[1].name]
    assert "No such file" in writer.summary.failed[0][1]
