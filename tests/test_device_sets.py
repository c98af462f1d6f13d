"""The model set on the device: switched all at once by fetch, checked by status and by the runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import HostError
from pipeline.graph import StageGraph
from pipeline.hosts import sync
from pipeline.runner import Outcome, RunRequest, plan, run
from runtime.clip import ClipRuntime
from runtime.errors import ModelFilesError
from runtime.manifest import Manifest
from stages import ALL_STAGES

GRAPH = StageGraph(ALL_STAGES)
FETCH = RunRequest(targets=("fetch",), only=True)


def _fetch_reasons(config) -> tuple[str, ...]:
    return dict((s.name, d.reasons) for s, d in plan(config, GRAPH, FETCH))["fetch"]


def _fetched(config) -> Path:
    outcome = run(config, GRAPH, FETCH)[-1]
    assert outcome.outcome is Outcome.RAN, outcome.summary
    return config.artifacts.parent / "device" / "models"


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
    ClipRuntime.load(models, with_text=False)

    monkeypatch.setattr(sync, "_send", real_send)
    _fetched(config)
    second = models.resolve()
    assert second != first and first.is_dir()  # the previous set stays for a server still reading it
    Manifest.read(models).verify(models, hashes=True)
    assert (second / "vocab" / label_table.name).read_bytes() == label_table.read_bytes()
    assert ClipRuntime.load(models, with_text=False).models_dir == second
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
        ClipRuntime.load(models, with_text=False)

    _fetched(config)  # what status said would run
    assert _fetch_reasons(config) == ()
    ClipRuntime.load(models, with_text=False)
    models.unlink()
    assert _fetch_reasons(config) == (f"device local: {models} holds no model set",)
