"""A WD tagger through the pipeline beside the CLIP model (`tagger:` in pipeline.yaml): its own stages
(tagger-export, tagger-verify, tagger-calibrate, tagger-compile), carried by fetch in the device's set,
tested by the smoke test and served. Tiny random taggers of each v3 family, real onnxruntime, the real CLI
and server, and the Pulsar2 stand-in on the real dockerd for the build host."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.graph import StageGraph
from pipeline.runner import Outcome, RunRequest, plan, run
from runtime.tagger import TagList, TagThresholds, prepare_image
from stages import ALL_STAGES, stages_for
from stages.config import PipelineConfig, load_config
from tests.helpers import IMAGES, REPO, device_set, tiny_config_dict
from tests.loopback import free_port

TAGGER_STAGES = ["tagger-export", "tagger-verify", "tagger-calibrate", "tagger-compile"]
PHOTOS = sorted(IMAGES.glob("*.jpg"))[:4]
A1111_BAR = 0.5  # A1111's interrogate_deepbooru_score_threshold default
NEAR_BAR = 0.01  # a tag this close to the bar may fall either side after quantization: not compared


def _outcomes(config: PipelineConfig, *targets: str) -> dict[str, Outcome]:
    request = RunRequest(targets=targets or None)
    return {o.stage: o.outcome for o in run(config, StageGraph(stages_for(config)), request)}


def _stale(config: PipelineConfig) -> set[str]:
    return {
        stage.name for stage, decision in plan(config, StageGraph(stages_for(config)), RunRequest()) if decision.stale
    }


def _float_tags(folder: Path, photo: Path, bar: float) -> tuple[set[str], set[str]]:
    """The published float model's tags at `bar` for the photo (the wd-tagger Space's steps), and the tags
    too close to the bar to hold either way."""
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]
    probabilities = session.run(
        None, {session.get_inputs()[0].name: prepare_image(Image.open(photo), size).astype(np.float32)}
    )[0][0]
    tags = TagList.read(folder / "selected_tags.csv")
    kept = set(tags.answer(probabilities, TagThresholds(bar, bar)).tags)
    near = {tags.names[i] for i in np.flatnonzero(np.abs(probabilities - bar) < NEAR_BAR) if tags.categories[i] != 9}
    return kept, near


@pytest.mark.slow
def test_invoke_all_with_the_wd_tagger_example_serves_the_float_tagger_s_tags_as_deepdanbooru(tmp_path: Path) -> None:
    """examples/wd-tagger.yaml as a user runs it (its artifacts here): `invoke all` offline builds both models,
    the smoke test reports the tags' agreement, and the server started on the device's models answers A1111's
    `deepdanbooru` with the tagger's tags: the float ONNX's set, best first, as A1111 writes them."""
    example = yaml.safe_load((REPO / "examples/wd-tagger.yaml").read_text())
    example["artifacts"] = str(tmp_path / "artifacts")
    example["hosts"]["local"]["workdir"] = str(tmp_path / "device")
    for stage in ("verify", "calibrate"):
        example["stages"][stage]["images"] = str(IMAGES)
    example["stages"]["calibrate"]["prompts"] = str(REPO / "data/calibration_prompts.txt")
    example["stages"]["embed-vocab"]["vocabulary"] = str(REPO / "examples/tiny-vocab.yaml")
    config_path = tmp_path / "wd-tagger.yaml"
    config_path.write_text(yaml.safe_dump(example))
    built = subprocess.run(
        [sys.executable, "-m", "invoke", "all", "--config", str(config_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert all(f"{stage}: ran" in built.stdout for stage in TAGGER_STAGES), built.stdout[-3000:]
    assert "tags as float: Jaccard" in built.stdout
    config = load_config(config_path)
    assert not _stale(config)
    report = json.loads((config.artifacts / "smoke-test/devices/local/measurements.json").read_text())
    assert report["tag_agreement"]["photos"] >= 1 and report["tag_agreement"]["jaccard"] >= 0.9
    assert report["encoders"]["tagger"]["model"] == "model.onnx"  # the onnxruntime target's QDQ model

    models = tmp_path / "device/models"
    assert sorted(p.name for p in (device_set(models) / "tagger").iterdir()) == [
        "golden",
        "model.onnx",
        "selected_tags.csv",
        "tagger.json",
    ]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "runtime.server", "--models", str(models), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.get("/healthz")
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr and server.stderr.read()
                time.sleep(0.2)
        assert client.get("/tagger/v1/interrogators").json() == {"models": ["tiny-wd-tagger"]}
        published = config.artifacts / "cache/tiny-wd-tagger"
        for photo in PHOTOS:
            image = base64.b64encode(photo.read_bytes()).decode()
            answer = client.post("/sdapi/v1/interrogate", json={"image": image, "model": "deepdanbooru"})
            assert answer.status_code == 200, answer.text
            served = [tag.replace(" ", "_") for tag in answer.json()["caption"].split(", ") if tag]
            wanted, near = _float_tags(published, photo, A1111_BAR)
            assert set(served) - near == wanted - near, photo.name
            assert served == sorted(served)  # A1111's deepbooru_sort_alpha, on by default
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def with_tagger(built_artifacts: Path, tmp_path: Path) -> Callable[..., PipelineConfig]:
    """The built tiny CLIP (copied) and a config with `tagger:` (overrides as keyword arguments)."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(built_artifacts, artifacts, copy_function=shutil.copy2)

    def make(**tagger: object) -> PipelineConfig:
        data = tiny_config_dict(artifacts)
        data["tagger"] = {"id": "builtin:tiny-wd-convnext-tagger", **tagger}
        data["hosts"]["mac"] = {"kind": "ssh", "address": "mac.local"}
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return load_config(path)

    return make


def test_a_tagger_adds_its_own_stages_and_leaves_the_clip_model_s_up_to_date(with_tagger) -> None:
    """Adding `tagger:` runs the tagger's stages, fetch and the smoke test, not the CLIP model's; a new bar
    reruns the smoke test alone; `--host` on tagger-compile names compile's build host."""
    config = with_tagger()
    without = config.model_copy(update={"tagger": None})
    assert {s.name for s in stages_for(without)} == {s.name for s in ALL_STAGES}
    assert _stale(without) == {"fetch", "smoke-test"}  # the copy's device folder is another one
    assert _stale(config) == {*TAGGER_STAGES, "fetch", "smoke-test"}  # no CLIP stage

    outcomes = _outcomes(config)
    assert {stage for stage, outcome in outcomes.items() if outcome is Outcome.RAN} == {
        *TAGGER_STAGES,
        "fetch",
        "smoke-test",
    }
    assert not _stale(config)
    compiled = json.loads((config.artifacts / "tagger-compile/compiled.json").read_text())
    assert set(compiled["models"]) == {"tagger"} and compiled["models"]["tagger"]["cosine"] > 0.999
    calibration = json.loads((config.artifacts / "tagger-calibrate/calibration.json").read_text())
    assert calibration["archives"]["input"]["shape"] == [1, 64, 64, 3]  # NHWC, as the device feeds it
    manifest = json.loads((config.artifacts / "fetch/manifest.json").read_text())
    assert {"tagger/model.onnx", "tagger/selected_tags.csv", "tagger/golden/output.npy"} <= set(manifest["files"])

    assert _stale(with_tagger(threshold=0.4)) == {"smoke-test"}
    assert _stale(with_tagger(name="booru")) == {*TAGGER_STAGES, "fetch", "smoke-test"}
    moved = with_tagger().with_host("tagger-compile", "mac")
    assert moved.stages.compile.host == "mac"


def test_a_tagger_that_is_not_one_is_refused_naming_what_is_wrong(with_tagger, write_config, tmp_path: Path) -> None:
    data = tiny_config_dict(tmp_path / "artifacts")
    data["tagger"] = {"id": "builtin:tiny-wd-eva02-tagger"}
    with pytest.raises(ConfigError, match="unknown built-in tagger 'builtin:tiny-wd-eva02-tagger'"):
        load_config(write_config(data))

    folder = tmp_path / "my tagger"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"")
    outcome = run(with_tagger(id=str(folder)), StageGraph(stages_for(with_tagger())), RunRequest(("tagger-export",)))
    assert outcome[-1].outcome is Outcome.FAILED
    assert f"tagger folder {folder} has no selected_tags.csv" in outcome[-1].summary

    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n0,general,9,1\n1,solo,0,1\n")
    (folder / "model.onnx").write_bytes(b"\x08\x07not a model")
    garbage = run(with_tagger(id=str(folder)), StageGraph(stages_for(with_tagger())), RunRequest(("tagger-export",)))
    assert garbage[-1].outcome is Outcome.FAILED and f"{folder}/model.onnx is not an ONNX model" in garbage[-1].summary

    published = run(with_tagger(), StageGraph(stages_for(with_tagger())), RunRequest(("tagger-export",)))
    assert published[-1].outcome is Outcome.RAN
    shutil.copy(with_tagger().artifacts / "cache/tiny-wd-convnext-tagger/model.onnx", folder / "model.onnx")
    mismatched = run(with_tagger(id=str(folder)), StageGraph(stages_for(with_tagger())), RunRequest(("tagger-export",)))
    assert mismatched[-1].outcome is Outcome.FAILED
    assert "gives 19 outputs but" in mismatched[-1].summary and "names 2 tags" in mismatched[-1].summary
    assert (with_tagger().artifacts / "tagger-export/model.onnx").is_file()  # the last good export is kept


def test_invoke_caption_tagger_alone_names_a_set_without_a_tagger(built_artifacts: Path) -> None:
    from tests.test_cli import invoke

    models = built_artifacts.parent / "device/models"
    done = invoke("caption", "--models", str(models), "--images", str(IMAGES), "--tagger", "--dry-run", "1")
    assert done.returncode == 1 and f"error: the models in {models} hold no tagger" in done.stderr
    assert "add `tagger: {id: ...}` to pipeline.yaml and run `invoke all`" in done.stderr


@pytest.mark.slow
def test_the_tagger_compiles_with_pulsar2_on_the_build_host_and_runs_on_the_device(
    built_artifacts: Path, pulsar2_build: Callable[..., PipelineConfig], build_host_workdir: Path, tmp_path: Path
) -> None:
    """Pulsar2 (the stand-in image on the real Docker Engine, over SSH) takes the tagger's NHWC calibration
    archive and config beside the encoders'; the device (over SSH) runs tagger/model.axmodel through
    axengine and the smoke test measures its tags."""
    outcomes = _outcomes(pulsar2_build(built_artifacts, tagger={"id": "builtin:tiny-wd-swinv2-tagger"}), "smoke-test")
    artifacts = tmp_path / "artifacts"
    assert all(outcome in (Outcome.RAN, Outcome.UP_TO_DATE) for outcome in outcomes.values()), outcomes
    pulsar2 = json.loads((artifacts / "tagger-compile/tagger.pulsar2.json").read_text())
    processor = pulsar2["input_processors"][0]
    assert (processor["tensor_layout"], processor["src_layout"], processor["src_dtype"]) == ("NHWC", "NHWC", "U8")
    assert (build_host_workdir / "calibration/tagger.tar").is_file()
    report = json.loads((artifacts / "smoke-test/devices/pi/measurements.json").read_text())
    tagger = report["encoders"]["tagger"]
    assert (tagger["backend"], tagger["model"]) == ("axengine", "model.axmodel") and tagger["cosine_min"] > 0.9999
    assert report["tag_agreement"]["jaccard"] == 1.0 and tagger["input_dtype"] == "uint8"
