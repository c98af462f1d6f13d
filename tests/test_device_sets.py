"""The model set on the device: switched all at once by fetch, checked by status and by the runtime."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common.errors import ModelFilesError
from pipeline.errors import HostError
from pipeline.graph import StageGraph
from pipeline.hosts import sync
from pipeline.runner import Outcome, RunRequest, plan, run
from runtime.clip import ClipRuntime
from runtime.manifest import Manifest
from stages import ALL_STAGES
from tests.helpers import device_set

GRAPH = StageGraph(ALL_STAGES)
FETCH = RunRequest(targets=("fetch",), only=True)


def _fetch_reasons(config) -> tuple[str, ...]:
    return dict((s.name, d.reasons) for s, d in plan(config, GRAPH, FETCH))["fetch"]


def _fetched(config) -> Path:
    outcome = run(config, GRAPH, FETCH)[-1]
    assert outcome.outcome is Outcome.RAN, outcome.summary
    return device_set(config.artifacts.parent / "device" / "models")


def test_a_fetch_killed_midway_leaves_the_previous_set_in_use_and_the_next_one_switches(
    tiny_pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill during fetch once left the new image encoder beside the old text encoder and manifest,
    and the server answered from that mix without a word."""
    config = tiny_pipeline()
    models = _fetched(config)
    first = models.resolve()
    label_table = next((config.artifacts / "embed-vocab").glob("*.npy"))
    label_table.write_bytes(label_table.read_bytes()[:-4] + b"\x00\x00\x80\x3f")  # the next set differs

    sent: list[str] = []
    real_send = sync._send

    def dies_after_one_file(transport, local, remote, progress):  # as a kill -9 would, mid-upload
        if sent:
            raise HostError("local", "killed")
        sent.append(remote)
        return real_send(transport, local, remote, progress)

    monkeypatch.setattr(sync, "_send", dies_after_one_file)
    assert run(config, GRAPH, FETCH)[-1].outcome is Outcome.FAILED
    assert models.resolve() == first and sent and not sent[0].startswith(str(first))
    Manifest.read(models).verify(models, hashes=True)  # the previous set, whole
    ClipRuntime.load(models)

    monkeypatch.setattr(sync, "_send", real_send)
    _fetched(config)
    second = models.resolve()
    assert second != first and first.is_dir()  # the previous set stays for a server still reading it
    Manifest.read(models).verify(models, hashes=True)
    assert (second / "vocab" / label_table.name).read_bytes() == label_table.read_bytes()
    assert ClipRuntime.load(models).models_dir == second
    assert _fetch_reasons(config) == ()


def test_status_notices_device_files_removed_or_changed_and_the_runtime_names_invoke_fetch(tiny_pipeline) -> None:
    config = tiny_pipeline()
    models = _fetched(config)
    assert _fetch_reasons(config) == ()

    (models / "image_encoder.onnx").unlink()
    tokenizer = models / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text() + " ")
    size = tokenizer.stat().st_size
    assert _fetch_reasons(config) == (
        "device local: image_encoder.onnx missing",
        f"device local: tokenizer.json is {size:,} bytes, not {size - 1:,}",
    )
    with pytest.raises(ModelFilesError, match=r"image_encoder\.onnx is missing.*Run `invoke fetch`"):
        ClipRuntime.load(models)

    _fetched(config)  # what status said would run
    assert _fetch_reasons(config) == ()
    ClipRuntime.load(models)
    models.unlink()
    assert _fetch_reasons(config) == (f"device local: {models} holds no model set",)


def _user_files(models: Path) -> dict[str, bytes]:
    """A Stable Diffusion server's own models folder, laid out as the manual leaves it."""
    files = {"sd15/unet.axmodel": b"unet weights", "config.json": b'{"sd": true}', "clip/old.axmodel": b"mine"}
    for name, data in files.items():
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        (models / name).write_bytes(data)
    return files


def _assert_kept(models: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (models / name).read_bytes() == data, name


@pytest.mark.parametrize("absolute", [False, True])
def test_a_shared_models_folder_keeps_the_users_files_through_all_fetch_again_and_smoke_test(
    tiny_pipeline, tmp_path: Path, absolute: bool
) -> None:
    """The manual copies CLIP into the SD server's own models/: fetch once moved that folder aside and a
    second fetch deleted it."""
    models = tmp_path / "device" / "sd-models"
    models.mkdir(parents=True)
    files = _user_files(models)
    device = {"host": "local", "models_dir": str(models) if absolute else "sd-models"}
    config = tiny_pipeline(device=device)
    for request in (FETCH, RunRequest(targets=("fetch",), only=True, force=True), RunRequest()):
        outcomes = run(config, GRAPH, request)
        assert all(o.outcome in (Outcome.RAN, Outcome.UP_TO_DATE) for o in outcomes), outcomes
        assert not models.is_symlink()
        _assert_kept(models, files)
    assert sorted(p.name for p in models.iterdir()) == ["clip", "clip-axera", "config.json", "sd15"]
    assert ClipRuntime.load(models).models_dir == device_set(models).resolve()


def test_a_folder_of_our_name_that_we_did_not_make_is_refused_and_left_alone(tiny_pipeline, tmp_path: Path) -> None:
    models = tmp_path / "device" / "models"
    theirs = models / "clip-axera"
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("mine")
    outcome = run(tiny_pipeline(), GRAPH, FETCH)[-1]
    assert outcome.outcome is Outcome.FAILED
    assert f"{theirs} exists and was not made by this pipeline" in outcome.summary
    assert "device.models_dir" in outcome.summary
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]


def test_pruning_removes_only_sets_fetch_made(tiny_pipeline, tmp_path: Path) -> None:
    config = tiny_pipeline()
    models = _fetched(config)
    sets = models.resolve().parent
    (sets / "keep-me").mkdir()
    (sets / "keep-me" / "weights.bin").write_bytes(b"x")
    elsewhere = tmp_path / "other disk"
    elsewhere.mkdir()
    (elsewhere / "data").write_bytes(b"y")
    (sets / "a-link").symlink_to(elsewhere)
    made = []
    for byte in (b"\x01", b"\x02", b"\x03"):  # three more sets: the oldest of ours are pruned
        table = next((config.artifacts / "embed-vocab").glob("*.npy"))
        table.write_bytes(table.read_bytes()[:-1] + byte)
        made.append(_fetched(config).resolve().name)
    assert sorted(p.name for p in sets.iterdir()) == sorted(["keep-me", "a-link", *made[-2:]])
    assert (sets / "keep-me" / "weights.bin").read_bytes() == b"x" and (elsewhere / "data").read_bytes() == b"y"


def test_the_layout_of_older_releases_is_undone_and_the_users_folder_put_back(tiny_pipeline, tmp_path: Path) -> None:
    """Older releases moved a plain models folder to models.sets/before-sets and put a link in its place."""
    config = tiny_pipeline()
    device = tmp_path / "device"
    old_set = device / "models.sets" / "0123456789abcdef"
    old_set.mkdir(parents=True)
    (old_set / "manifest.json").write_text("{}")
    before = device / "models.sets" / "before-sets"
    before.mkdir()
    files = _user_files(before)
    (device / "models").symlink_to("models.sets/0123456789abcdef")
    _fetched(config)
    models = device / "models"
    assert models.is_dir() and not models.is_symlink()
    _assert_kept(models, files)
    assert not (device / "models.sets").exists()


def test_two_controllers_fetching_to_one_device_take_turns(tiny_pipeline, tmp_path: Path) -> None:
    """Without a lock on the device, two fetches at once once left the link on a set with files missing."""
    first = tiny_pipeline()
    second_artifacts = tmp_path / "second" / "artifacts"
    shutil.copytree(first.artifacts, second_artifacts, copy_function=shutil.copy2)
    second = first.model_copy(update={"artifacts": second_artifacts})
    table = next((second_artifacts / "embed-vocab").glob("*.npy"))
    table.write_bytes(table.read_bytes()[:-1] + b"\x07")  # the two sets differ
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda config: run(config, GRAPH, FETCH)[-1], (first, second)))
    assert [o.outcome for o in outcomes] == [Outcome.RAN, Outcome.RAN], outcomes
    models = device_set(tmp_path / "device" / "models")
    Manifest.read(models).verify(models, hashes=True)
    assert len(list(models.resolve().parent.iterdir())) == 2
