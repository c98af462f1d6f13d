"""Sharing the NPU with another program: a cross-process lock, idle unload, and the service inside a host app.

The other program is a real second process (a stand-in for a Stable Diffusion server) that takes the same
lock file with flock around its own "NPU work", as README tells such a program to."""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from runtime.clip import VOCAB_DIR, ClipRuntime
from runtime.interrogator import Interrogator
from runtime.label_tables import LabelTables
from runtime.npu import NpuLock
from tests.helpers import device_set
from tests.loopback import app_clients

REPO = Path(__file__).resolve().parent.parent
INTERROGATE = "/sdapi/v1/interrogate"
CAT = base64.b64encode((REPO / "data/images/cat.jpg").read_bytes()).decode()

# The other program: holds the lock `hold` seconds, `times` times, and records when it held it.
OTHER_PROGRAM = """
import fcntl, json, sys, time
path, hold, times, log = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
held = []
with open(path, "a+") as lock:
    for _ in range(times):
        fcntl.flock(lock, fcntl.LOCK_EX)
        start = time.time()
        print("held", flush=True)
        time.sleep(hold)
        held.append((start, time.time()))
        fcntl.flock(lock, fcntl.LOCK_UN)
        time.sleep(0.05)
open(log, "w").write(json.dumps(held))
"""


@pytest.fixture(scope="module")
def models(built_artifacts: Path) -> Path:
    return device_set(built_artifacts.parent / "device" / "models")


def _interrogator(models: Path, lock_file: Path | None = None, unload_after: float | None = None) -> Interrogator:
    clip = ClipRuntime.load(models, npu=NpuLock(lock_file), unload_after=unload_after)
    return Interrogator(clip, LabelTables.load(models / VOCAB_DIR))


def _other_program(lock_file: Path, hold: float, times: int, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", OTHER_PROGRAM, str(lock_file), str(hold), str(times), str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


@pytest.fixture
def serve() -> Iterator:
    with app_clients() as start:
        yield start


def test_a_request_waits_for_another_programs_lock_and_answers_after_it_is_released(
    models: Path, tmp_path: Path, serve
) -> None:
    lock_file = tmp_path / "ax650.lock"
    client = serve(_interrogator(models, lock_file), queue_timeout_s=30)
    other = _other_program(lock_file, 3.0, 1, tmp_path / "held.json")
    response = client.post(INTERROGATE, json={"image": CAT})
    answered = time.time()
    other.wait(10)
    ((_, released),) = json.loads((tmp_path / "held.json").read_text())
    assert response.status_code == 200 and response.json()["caption"]
    assert answered >= released  # not before the other program let go
    npu = client.get("/healthz").json()["npu"]
    assert npu["lock_file"] == str(lock_file) and npu["waits"] >= 1 and npu["wait_ms_max"] > 1500


def test_a_wait_past_the_queue_timeout_is_a_503_naming_the_lock(models: Path, tmp_path: Path, serve) -> None:
    lock_file = tmp_path / "ax650.lock"
    client = serve(_interrogator(models, lock_file), queue_timeout_s=0.5)
    other = _other_program(lock_file, 2.0, 1, tmp_path / "held.json")
    busy = client.post(INTERROGATE, json={"image": CAT})
    assert busy.status_code == 503
    assert "another program held the NPU lock" in busy.json()["detail"] and str(lock_file) in busy.json()["detail"]
    other.wait(10)
    assert client.post(INTERROGATE, json={"image": CAT}).status_code == 200
    assert client.get("/healthz").json()["npu"]["timeouts"] == 1


def test_our_encodes_never_overlap_the_other_programs_npu_work(models: Path, tmp_path: Path, serve) -> None:
    lock_file = tmp_path / "ax650.lock"
    interrogator = _interrogator(models, lock_file)
    ours: list[tuple[float, float]] = []
    encode = interrogator.clip.encode_pixels

    def recorded(pixels):
        start = time.time()
        try:
            return encode(pixels)
        finally:
            ours.append((start, time.time()))

    interrogator.clip.encode_pixels = recorded  # type: ignore[method-assign]
    client = serve(interrogator, queue_timeout_s=30)
    other = _other_program(lock_file, 0.2, 8, tmp_path / "held.json")
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: client.post(INTERROGATE, json={"image": CAT}).status_code, range(12)))
    other.wait(30)
    theirs = json.loads((tmp_path / "held.json").read_text())
    assert statuses == [200] * 12 and len(ours) == 12 and len(theirs) == 8
    for start, end in ours:
        for their_start, their_end in theirs:
            assert end <= their_start or start >= their_end, "our encode ran while the other program held the NPU"


def test_idle_unload_then_one_reload_under_concurrent_requests(models: Path, serve) -> None:
    # 1 s: on a loaded machine a queue of 8 may leave a gap of a few tenths between two encodes, and then
    # a second idle unload would be right, not what this counts
    client = serve(_interrogator(models, unload_after=1.0), queue_timeout_s=30)
    first = client.post(INTERROGATE, json={"image": CAT}).json()["caption"]
    deadline = time.monotonic() + 10
    while client.get("/healthz").json()["image_encoder"]["state"] != "unloaded":
        assert time.monotonic() < deadline, "the image encoder was not unloaded after 1 idle second"
        time.sleep(0.05)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.post(INTERROGATE, json={"image": CAT}), range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert {a.json()["caption"] for a in answers} == {first}  # no crossed or broken result
    health = client.get("/healthz").json()
    assert health["image_encoder"]["loads"] == 2 and health["image_encoder"]["unloads"] >= 1
    assert health["image_encoder"]["last_load_at"] is not None
    assert health["text_encoder"]["state"] == "unloaded" and health["text_encoder"]["loads"] == 0  # captions need none


def _example(name: str):
    """An embedding example of examples/, which README shows verbatim."""
    path = REPO / "examples" / name
    assert path.read_text() in (REPO / "README.md").read_text(), f"README no longer shows {path.name} as it is"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fastapi_example_serves_a1111s_endpoint_inside_a_host_app(models: Path) -> None:
    from fastapi.testclient import TestClient

    unet_lock = threading.Lock()
    app = _example("embed_fastapi.py").build_app(models, unet_lock)
    with TestClient(app) as client:
        assert client.post(INTERROGATE, json={"image": CAT}).json()["caption"]
        with unet_lock:  # the host app is using the NPU: our request waits for it, within its limit
            waiting = threading.Thread(target=lambda: client.post(INTERROGATE, json={"image": CAT}))
            waiting.start()
            time.sleep(0.3)
            assert waiting.is_alive()
        waiting.join(30)
        assert client.post(INTERROGATE, json={"image": "not an image"}).json()["detail"] == "Invalid encoded image"


def test_the_flask_example_answers_with_the_host_programs_lock(models: Path) -> None:
    unet_lock = threading.Lock()
    app = _example("embed_flask.py").build_app(models, unet_lock)
    client = app.test_client()
    answer = client.post(INTERROGATE, json={"image": CAT})
    assert answer.status_code == 200 and answer.get_json()["caption"].count(", ") >= 5
    tags = client.post(INTERROGATE, json={"image": CAT, "model": "deepdanbooru"})
    assert tags.status_code == 200 and "caption" in tags.get_json()
    bad = client.post(INTERROGATE, json={"image": "!!"})
    assert bad.status_code == 500 and bad.get_json()["detail"] == "Invalid encoded image"
