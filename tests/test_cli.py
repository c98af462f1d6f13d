"""The commands as a user types them: `invoke ...` in a subprocess, exit codes and what is printed."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, STAGES, interruptible, tiny_config_dict


def invoke(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def _assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    for fragment in fragments:
        assert fragment in last, last


def test_caption_and_classify_without_images_or_on_an_empty_folder_say_so_in_one_line(tmp_path: Path) -> None:
    for task, question in (("caption", ()), ("classify", ("--labels", "a,b"))):
        _assert_one_line_error(invoke(task, "--models", str(tmp_path), *question), "--images is needed")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    empty = invoke("caption", "--images", str(tmp_path / "empty"), "--models", str(tmp_path))
    _assert_one_line_error(empty, f"no images in {tmp_path / 'empty'} (searched recursively for .jpg")


def test_counts_in_messages_agree_with_their_nouns() -> None:
    from pipeline.terminal import counted

    assert counted(1, "photo") == "1 photo" and counted(4, "photo") == "4 photos"
    assert counted(1, "caption differs", "captions differ") == "1 caption differs"
    assert counted(1200, "caption differs", "captions differ") == "1,200 captions differ"


def test_list_shows_every_task_with_help() -> None:
    result = invoke("--list")
    assert result.returncode == 0
    for name in ("all", "export", "verify", "status"):
        assert f"\n  {name} " in result.stdout


def test_misspelled_key_is_one_line_and_non_zero(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.yaml"
    config.write_text("stages:\n  verfy:\n    min_cosine: 0.9\n")
    result = invoke("all", "--config", str(config))
    _assert_one_line_error(result, f"{config}: stages.verfy: unknown key; did you mean 'verify'?")


def test_missing_model_directory_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"model": {"id": "./no-such-model"}, "artifacts": str(tmp_path / "a")}))
    result = invoke("export", "--config", str(config))
    _assert_one_line_error(result, "model directory", "no-such-model does not exist")


def test_unreachable_model_id_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.yaml"
    data = {"model": {"id": "openai/clip-vit-base-patch32"}, "artifacts": str(tmp_path / "a")}
    config.write_text(yaml.safe_dump(data))
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = invoke("export", "--config", str(config), env=env)
    _assert_one_line_error(result, "cannot load model 'openai/clip-vit-base-patch32'", "HF_HUB_OFFLINE is set")
    assert "set HF_HUB_OFFLINE=1" not in result.stdout + result.stderr  # advice already followed is not given


def test_offline_with_an_uncached_model_fails_at_once_quietly_naming_the_fix(tmp_path: Path) -> None:
    """The hub client alone would print ten retry lines over half a minute before its own long error."""
    with socket.socket() as sock:  # a closed port on loopback: the hub as an offline machine sees it
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        yaml.safe_dump({"model": {"id": "openai/clip-vit-base-patch32"}, "artifacts": str(tmp_path / "a")})
    )
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{closed}", "HF_HUB_OFFLINE": "0"}
    result = invoke("compile", "--host", "local", "--config", str(config), env=env)
    _assert_one_line_error(
        result, "not in the local Hugging Face cache and 127.0.0.1 is unreachable", "--config examples/local.yaml"
    )
    assert "retry" not in (result.stdout + result.stderr).lower()  # the hub's retries print a line each


def test_all_runs_then_reports_up_to_date_and_status_explains_changes(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.yaml"
    data = tiny_config_dict(tmp_path / "artifacts")
    config.write_text(yaml.safe_dump(data))
    first = invoke("all", "--config", str(config))
    assert first.returncode == 0, first.stderr
    for stage in STAGES:
        assert f"{stage}: ran" in first.stdout
    noise = first.stdout + first.stderr
    assert "torchvision" not in noise and "\r" not in noise  # no library warnings or progress bars in a log
    assert "pipeline summary" in first.stdout

    second = invoke("all", "--config", str(config))
    assert second.returncode == 0
    for stage in STAGES:
        assert f"{stage}: up to date" in second.stdout

    data["stages"]["verify"]["min_cosine"] = 0.9999
    config.write_text(yaml.safe_dump(data))
    status = invoke("status", "--config", str(config))
    assert "param min_cosine: 0.99999 -> 0.9999" in status.stdout
    dry = invoke("all", "--config", str(config), "--dry-run")
    assert "verify: would run" in dry.stdout and "export: up to date" in dry.stdout


def test_serve_flags_that_need_a_host_say_so(tmp_path: Path) -> None:
    config = tmp_path / "local.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "artifacts")))
    _assert_one_line_error(invoke("serve", "--status", "--config", str(config)), "--status is for servers on hosts")
    _assert_one_line_error(invoke("serve", "--install", "--config", str(config)), "--install is for servers on hosts")
    _assert_one_line_error(
        invoke("serve", "--stop", "--install", "--host", "local", "--config", str(config)),
        "--stop and --install cannot be combined: pick one",
    )
    _assert_one_line_error(invoke("serve", "--models", str(tmp_path)), "run `invoke fetch` first")


def test_serve_without_host_goes_to_the_device_when_it_is_another_machine(tmp_path: Path) -> None:
    """One device: `invoke serve --status` asks the device's host, as fetch and smoke-test use it (here a
    loopback port where nothing listens, so the answer is one error line naming the device)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    data = tiny_config_dict(tmp_path / "artifacts")
    data["hosts"]["pi"] = {"address": "127.0.0.1", "port": closed_port, "retries": 0, "connect_timeout": 5}
    data["device"] = {"host": "pi"}
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(data))
    result = invoke("serve", "--status", "--config", str(config), timeout=120)
    _assert_one_line_error(result, "pi: cannot connect to 127.0.0.1")
    assert "Errno None" not in result.stderr


def test_the_built_in_example_vocabulary_gives_the_tiny_model_tags(tiny_pipeline, built_artifacts: Path) -> None:
    """examples/local.yaml's tag threshold fits the tiny CLIP's random weights: deepdanbooru is not empty."""
    from pipeline.graph import StageGraph
    from pipeline.runner import Outcome, RunRequest, run
    from runtime.clip import ClipRuntime
    from runtime.interrogator import Interrogator
    from runtime.label_tables import LabelTables
    from runtime.preprocess import open_image
    from stages import ALL_STAGES

    example = yaml.safe_load((REPO / "examples/local.yaml").read_text())["stages"]["embed-vocab"]
    config = tiny_pipeline(**{"embed-vocab": {"vocabulary": str(REPO / "examples" / example["vocabulary"])}})
    outcomes = run(config, StageGraph(ALL_STAGES), RunRequest(targets=("embed-vocab",)))
    assert outcomes[-1].outcome is Outcome.RAN, outcomes[-1].summary
    tables = LabelTables.load(config.artifacts / "embed-vocab")
    interrogator = Interrogator(ClipRuntime.load(built_artifacts.parent / "device/models"), tables)
    scores, _ = interrogator.score(open_image(REPO / "data/images/cat.jpg"))
    assert interrogator.tags(scores).count(", ") >= 2 and interrogator.tags_note(scores) == ""


def test_a_busy_port_is_one_error_line_and_exit_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("serve", "--models", str(tmp_path), "--port", str(port))
    assert result.returncode == 1
    _assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}", "pass --port")
    assert "Errno" not in result.stderr


def test_status_from_another_directory_finds_every_shipped_file(tmp_path: Path) -> None:
    """Defaults name the project's own photos, prompts and vocabulary, whatever the working directory."""
    config = tmp_path / "minimal.yaml"
    config.write_text(yaml.safe_dump({"model": {"id": "builtin:tiny-clip"}, "artifacts": "artifacts"}))
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(REPO), "status", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "not found" not in result.stdout + result.stderr


def test_the_report_page_says_why_the_smoke_test_could_not_run(tmp_path: Path) -> None:
    """A device that could not run the models writes only `error`: the page shows it instead of failing."""
    from commands.report_page import write_index
    from runtime.smoke_test import SmokeReport
    from stages.config import load_config

    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "artifacts")))
    config = load_config(tmp_path / "pipeline.yaml")
    reports = config.artifacts / "reports"
    reports.mkdir(parents=True)
    SmokeReport(error="no AX650 NPU found (axengine: No providers found)").write_to(reports / "smoke-test/local.json")
    (reports / "compile.json").write_text('{"target": "pulsar2"}')  # from an older release: no section, no crash
    page = write_index(config).read_text()
    assert "could not run: no AX650 NPU found (axengine: No providers found)" in page
    assert "No compile report yet." in page


@pytest.mark.slow
def test_readme_first_run_works_pasted_as_written(tmp_path: Path) -> None:
    """README's first commands in a clone of the repository: `invoke all` on the built-in example, then the
    serve-and-curl block as a user pastes it (the pip installs aside: this machine has them), then the real
    pipeline's `invoke all`, offline here: it fails on the model download, not on the preview's folder."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"\n\n((?:    .*\S.*\n)+)", readme)  # indented code blocks
    install = next(b for b in blocks if "invoke all --config examples/local.yaml" in b)
    serve = next(b for b in blocks if "invoke serve --config examples/local.yaml &" in b)
    clone = tmp_path / "clip-axera"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(clone)}
    for command in (part.strip() for part in install.strip().split("&&")):
        if command.startswith("invoke "):
            done = subprocess.run(
                ["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=900
            )
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    script = "\n".join(line[4:] for line in serve.splitlines())
    shell = subprocess.Popen(
        ["bash", "-c", script],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = shell.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)  # the server too, whatever the script left
    assert shell.returncode == 0, err[-2000:]
    answer = next(line for line in out.splitlines() if line.startswith('{"caption"'))  # a line of its own
    assert json.loads(answer)["caption"] and ", " in json.loads(answer)["caption"]

    from runtime.opening import open_interrogator
    from tests.loopback import app_clients

    preview = open_interrogator(clone / "artifacts/local/device/models")
    with app_clients() as start:  # clip-interrogator's API on the preview as README built it
        client = start(preview)
        image = base64.b64encode((REPO / "data/images/cat.jpg").read_bytes()).decode()
        for mode in ("fast", "classic", "best", "negative"):
            answer = client.post("/interrogator/prompt", json={"image": image, "mode": mode})
            assert answer.status_code == 200 and answer.json()["prompt"], answer.text
        assert client.post("/interrogator/analyze", json={"image": image}).status_code == 200

    real = next(b for b in blocks if b.strip() == "invoke all")  # the real pipeline, after the preview
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(["bash", "-c", real], cwd=clone, env=offline, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "already holds files" not in done.stdout + done.stderr
    assert "HF_HUB_OFFLINE is set" in done.stderr.strip().splitlines()[-1], done.stderr[-2000:]


def test_ctrl_c_on_caption_exits_130_saying_what_was_written_and_how_to_resume(
    built_artifacts: Path, tmp_path: Path
) -> None:
    """It exited 1 with no message (README promises 130 and a line)."""
    images = tmp_path / "set"
    images.mkdir()
    photos = sorted((REPO / "data/images").glob("*.jpg"))
    for index in range(400):
        photo = photos[index % len(photos)]
        (images / f"{index:03d}-{photo.name}").write_bytes(photo.read_bytes())
    out = tmp_path / "captions"
    models = str(built_artifacts.parent / "device" / "models")
    command = [
        sys.executable,
        "-m",
        "invoke",
        "caption",
        "--models",
        models,
        "--images",
        str(images),
        "--out",
        str(out),
    ]
    process = interruptible(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jsonl = out / "captions.jsonl"
    deadline = time.monotonic() + 120
    while not (jsonl.is_file() and jsonl.read_text().count("\n") >= 3):
        assert process.poll() is None and time.monotonic() < deadline, "captioning did not start"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and "captions written this run" in last and "resume" in last, last
    assert "Traceback" not in stderr
    written = len(list(out.glob("*.txt")))
    said = int(last.split()[1])
    assert 3 <= said < 400 and written in (said, said + 1)  # Ctrl+C between a file and its count: one more
