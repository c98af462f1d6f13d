"""clip-interrogator's modes and its extension's API, on the tiny CLIP with a small vocabulary of its lists:
each mode held to a transcription of clip-interrogator's algorithm (tests/ci_reference.py), each endpoint
to the extension's shapes."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.graph import StageGraph
from pipeline.runner import RunRequest, run
from runtime.interrogator import Interrogator
from runtime.opening import open_interrogator
from runtime.preprocess import open_image
from runtime.prompt_modes import PromptBuilder, PromptError, PromptMode, PromptSettings
from stages.config import load_config
from tests.ci_reference import ReferenceInterrogator
from tests.helpers import IMAGES, REPO, tiny_config_dict
from tests.loopback import app_clients

LISTS = REPO / "vocab" / "clip-interrogator"
UNBOUNDED = PromptSettings(chain_candidates=10**6, max_text_encodes=10**9)  # every phrase, as clip-interrogator


def _first(name: str, count: int) -> list[str]:
    return [line.strip() for line in (LISTS / name).read_text(encoding="utf-8").splitlines() if line.strip()][:count]


@pytest.fixture(scope="module")
def ci_artifacts(built_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CLIP's export with tables of a small clip-interrogator vocabulary (its lists, cut short so
    the merged table stays inside one of its 2048-label chunks)."""
    from stages import ALL_STAGES

    root = tmp_path_factory.mktemp("ci")
    shutil.copytree(built_artifacts, root / "artifacts", copy_function=shutil.copy2)
    spec = yaml.safe_load((REPO / "vocab/clip-interrogator.yaml").read_text())
    for category in spec["categories"]:
        if category.get("labels_file"):
            category["labels_file"] = str((REPO / "vocab" / category["labels_file"]).resolve())
        cut = {"artist": ("artists.txt", 30), "flavor": ("flavors.txt", 150), "movement": ("movements.txt", 60)}
        if category["name"] in cut:
            category.pop("labels_file")
            category["labels"] = _first(*cut[category["name"]])
    (root / "vocab.yaml").write_text(yaml.safe_dump(spec))
    data = tiny_config_dict(root / "artifacts")
    data["stages"]["embed-vocab"]["vocabulary"] = str(root / "vocab.yaml")
    (root / "pipeline.yaml").write_text(yaml.safe_dump(data))
    outcomes = run(load_config(root / "pipeline.yaml"), StageGraph(ALL_STAGES), RunRequest(targets=("embed-vocab",)))
    assert outcomes[-1].outcome.value == "ran", outcomes
    return root / "artifacts"


@pytest.fixture(scope="module")
def ci(ci_artifacts: Path) -> Interrogator:
    """The float export (its text encoder too) with the clip-interrogator tables."""
    return open_interrogator(ci_artifacts / "export", tables=ci_artifacts / "embed-vocab")


def _reference(ci: Interrogator, embedding: np.ndarray) -> ReferenceInterrogator:
    builder = PromptBuilder(ci)

    def encode(texts: list[str]) -> np.ndarray:
        ids, _ = builder.tokenizer.encode_batch(texts)
        with ci.clip.npu.hold():
            return ci.clip.encode_ids(ids)

    tables = {c.name: c for c in ci.tables.categories}
    return ReferenceInterrogator(embedding, tables, encode, lambda t: bool(builder.tokenizer.fills_context([t])[0]))


@pytest.mark.parametrize("photo", ["cat.jpg", "grace_hopper.jpg"])
def test_each_mode_chooses_clip_interrogator_s_labels_in_its_order(ci: Interrogator, photo: str) -> None:
    embedding, _ = ci.embed(open_image(IMAGES / photo))
    scores = ci.score(open_image(IMAGES / photo))[0]
    reference = _reference(ci, embedding)
    builder = PromptBuilder(ci, UNBOUNDED)
    subject = next(c for c in ci.tables.categories if c.name == "subject")
    caption = subject.prompt(reference.rank((list(subject.labels), np.asarray(subject.rows, np.float32)), 1)[0])
    expected = {
        PromptMode.FAST: reference.interrogate_fast(caption),
        PromptMode.CLASSIC: reference.interrogate_classic(caption),
        PromptMode.NEGATIVE: reference.interrogate_negative(),
        PromptMode.BEST: reference.interrogate(caption),
    }
    assert expected[PromptMode.NEGATIVE].count(", ") >= 1  # a chain, not one label
    for mode, prompt in expected.items():
        result = builder.prompt(scores, mode)
        assert result.prompt == prompt, mode
        assert (result.text_encodes == 0) == (mode in (PromptMode.FAST, PromptMode.CLASSIC))
    assert expected[PromptMode.FAST].startswith(caption + ", ")
    assert expected[PromptMode.BEST].startswith(caption)


def test_a_chain_stays_within_the_text_encode_budget(ci: Interrogator) -> None:
    scores = ci.score(open_image(IMAGES / "cat.jpg"))[0]
    for budget in (1, 40, 200):
        settings = PromptSettings(chain_candidates=16, max_text_encodes=budget)
        for mode in (PromptMode.BEST, PromptMode.NEGATIVE):
            result = PromptBuilder(ci, settings).prompt(scores, mode)
            assert result.text_encodes <= budget + 4  # best's last step compares four whole prompts
            assert result.timings_ms["text_encode"] >= 0
    roomy = PromptBuilder(ci, PromptSettings(chain_candidates=8)).prompt(scores, PromptMode.BEST)
    assert 1 < roomy.text_encodes <= 1 + 32 * (8 + 1) + 4


@pytest.fixture(scope="module")
def caption_only(built_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Interrogator:
    """The tiny CLIP with tables of the default vocabulary's caption and tag categories only."""
    from stages import ALL_STAGES

    root = tmp_path_factory.mktemp("caption-only")
    shutil.copytree(built_artifacts, root / "artifacts", copy_function=shutil.copy2)
    spec = yaml.safe_load((REPO / "vocab/default.yaml").read_text())
    spec["categories"] = [c for c in spec["categories"] if c.get("caption", True)]
    for category in spec["categories"]:
        category["labels_file"] = str(REPO / "vocab" / category["labels_file"])
    (root / "vocab.yaml").write_text(yaml.safe_dump(spec))
    data = tiny_config_dict(root / "artifacts")
    data["stages"]["embed-vocab"]["vocabulary"] = str(root / "vocab.yaml")
    (root / "pipeline.yaml").write_text(yaml.safe_dump(data))
    run(load_config(root / "pipeline.yaml"), StageGraph(ALL_STAGES), RunRequest(targets=("embed-vocab",)))
    return open_interrogator(root / "artifacts" / "export", tables=root / "artifacts" / "embed-vocab")


def test_a_vocabulary_without_clip_interrogator_s_lists_is_one_clear_error(caption_only: Interrogator) -> None:
    interrogator = caption_only
    builder = PromptBuilder(interrogator)
    with pytest.raises(PromptError, match=r"no artist, flavor, movement, trending categories, which the best mode"):
        builder.require(PromptMode.BEST)
    with pytest.raises(PromptError, match=r"vocab/default\.yaml, vocab/clip-interrogator\.yaml"):
        builder.require(None)
    with app_clients() as start:  # the server answers 501, in A1111's error shape, and keeps serving
        client = start(interrogator)
        refused = client.post("/interrogator/prompt", json={"image": _image(), "mode": "best"})
        assert refused.status_code == 501 and "vocab/clip-interrogator.yaml" in refused.json()["detail"]
        assert client.post("/sdapi/v1/interrogate", json={"image": _image()}).status_code == 200


def test_the_vocabulary_builds_artists_and_trending_as_clip_interrogator_does() -> None:
    from labels.vocabulary import load_vocabulary

    _, categories = load_vocabulary(REPO / "vocab/clip-interrogator.yaml")
    by_name = {c.spec.name: c for c in categories}
    raw = _first("artists.txt", 10**6)
    assert by_name["artist"].labels[:2] == (f"by {raw[0]}", f"by {raw[1]}")
    assert by_name["artist"].labels[len(raw)] == f"inspired by {raw[0]}" and len(by_name["artist"].labels) == 2 * len(
        raw
    )
    trending = by_name["trending"].labels
    assert len(trending) == 72 and trending[0] == "Artstation" and trending[18] == "trending on Artstation"
    assert trending[-1] == "zbrush central contest winner"
    assert not by_name["negative"].spec.caption


def _image() -> str:
    return base64.b64encode((IMAGES / "cat.jpg").read_bytes()).decode()


def test_the_extension_api_answers_in_its_shapes(ci: Interrogator) -> None:
    with app_clients() as start:
        client = start(ci, model_names=("ViT-L-14/openai",))
        assert client.get("/interrogator/models").json() == [ci.clip.info.model, "ViT-L-14/openai"]
        for mode in PromptMode:
            answer = client.post("/interrogator/prompt", json={"image": _image(), "mode": mode.value})
            assert answer.status_code == 200 and isinstance(answer.json()["prompt"], str) and answer.json()["prompt"]
        default = client.post("/interrogator/prompt", json={"image": _image()}).json()  # mode defaults to fast
        assert default["text_encodes"] == 0
        analysis = client.post("/interrogator/analyze", json={"image": _image(), "clip_model_name": "RN50/openai"})
        assert analysis.status_code == 200
        ranks = analysis.json()
        assert list(ranks) == ["medium", "artist", "movement", "trending", "flavor"]
        assert all(len(r) == 5 and all(isinstance(v, float) for v in r.values()) for r in ranks.values())
        assert list(ranks["flavor"].values()) == sorted(ranks["flavor"].values(), reverse=True)
        unknown = client.post("/interrogator/prompt", json={"image": _image(), "mode": "caption"})
        assert unknown.status_code == 422
        assert set(unknown.json()) == {"error", "detail", "body", "errors"}  # A1111's error shape
        assert "one of best, fast, classic, negative" in unknown.json()["detail"]


def test_another_model_is_answered_by_the_served_one_unless_refused(ci: Interrogator) -> None:
    body = {"image": _image(), "clip_model_name": "ViT-H-14/laion2b_s32b_b79k"}
    with app_clients() as start:
        assert start(ci).post("/interrogator/prompt", json=body).status_code == 200
        refused = start(ci, refuse_other_models=True).post("/interrogator/prompt", json=body)
        assert refused.status_code == 404 and refused.json()["error"] == "HTTPException"
        assert "Model not found" in refused.json()["detail"]


def test_a_huge_mode_or_model_name_is_quoted_back_cut_to_a_hundred_characters(ci: Interrogator) -> None:
    """A 10 MB `mode` once came back twice in the 422 (a 21 MB answer)."""
    huge = "m" * 1_000_000
    with app_clients() as start:
        client = start(ci, refuse_other_models=True)
        served = ci.clip.info.model
        for body, status in (({"mode": huge, "clip_model_name": served}, 422), ({"clip_model_name": huge}, 404)):
            answer = client.post("/interrogator/prompt", json={"image": _image(), **body})
            assert answer.status_code == status and len(answer.content) < 2_000, len(answer.content)
            assert "1,000,000 characters" in answer.json()["detail"]


def test_the_text_encoder_loads_for_best_only_and_unload_frees_both(ci: Interrogator) -> None:
    clip = ci.clip
    clip.text_model.unload()
    with app_clients() as start:
        client = start(ci)
        client.post("/interrogator/prompt", json={"image": _image(), "mode": "fast"}).raise_for_status()
        assert client.get("/healthz").json()["text_encoder"]["state"] == "unloaded"
        loads = clip.text_model.loads
        best = client.post("/interrogator/prompt", json={"image": _image(), "mode": "best"}).json()
        assert best["text_encodes"] > 0 and best["timings_ms"]["text_encode"] > 0
        assert client.get("/healthz").json()["text_encoder"]["state"] == "loaded" and clip.text_model.loads == loads + 1
        freed = client.post("/interrogator/unload").json()
        assert freed["image_encoder"] == freed["text_encoder"] == "unloaded" and freed["waited_for"] == 0
        health = client.get("/healthz").json()
        assert health["image_encoder"]["state"] == health["text_encoder"]["state"] == "unloaded"
        client.post("/interrogator/prompt", json={"image": _image(), "mode": "negative"}).raise_for_status()
        assert clip.image_model.loaded and clip.text_model.loaded


def test_unload_waits_for_a_running_best_prompt_and_nothing_loads_again_after_it(ci: Interrogator) -> None:
    """Unload answered at once while a best prompt ran, and the prompt's next step loaded the text encoder
    again (15 of 15 tries): an SD client was told the NPU was free when it was not."""
    from concurrent.futures import ThreadPoolExecutor

    clip = ci.clip
    waited = 0
    with app_clients() as start, ThreadPoolExecutor(1) as pool:
        client = start(ci)
        for _ in range(5):
            prompt = pool.submit(client.post, "/interrogator/prompt", json={"image": _image(), "mode": "best"})
            deadline = time.monotonic() + 30
            while client.get("/healthz").json()["queue"]["inside"] == 0 and not prompt.done():
                assert time.monotonic() < deadline
                time.sleep(0.002)
            freed = client.post("/interrogator/unload").json()
            loads = clip.text_model.loads
            assert prompt.result(timeout=60).status_code == 200
            assert freed["text_encoder"] == freed["image_encoder"] == "unloaded"
            waited += freed["waited_for"]
            time.sleep(0.1)
            assert not clip.text_model.loaded and not clip.image_model.loaded  # nothing came back
            assert clip.text_model.loads == loads
    assert waited >= 3, "the prompts ended before the unload came: nothing was waited for"


def test_the_extension_api_asks_for_the_same_auth(ci: Interrogator) -> None:
    with app_clients() as start:
        client = start(ci, credentials={"user": "secret"})
        assert client.get("/interrogator/models").status_code == 401
        assert client.post("/interrogator/prompt", json={"image": _image()}).status_code == 401
        assert client.get("/interrogator/models", auth=("user", "secret")).status_code == 200


def test_invoke_caption_writes_prompts_in_a_mode(ci_artifacts: Path, tmp_path: Path) -> None:
    models = ci_artifacts / "export"
    (models / "vocab").symlink_to(ci_artifacts / "embed-vocab")
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(IMAGES / "cat.jpg", photos / "cat.jpg")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "invoke", "caption", "--images", str(photos), "--out", str(out)]
    result = subprocess.run(
        [*command, "--models", str(models), "--mode", "classic"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "captions.jsonl").read_text().splitlines()[0])
    assert record["mode"] == "classic" and record["text_encodes"] == 0
    assert (out / "cat.txt").read_text().strip() == record["prompt"]
    wrong = subprocess.run(
        [*command, "--models", str(models), "--mode", "caption"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert wrong.returncode == 1 and "error: --mode 'caption' is not a prompt mode" in wrong.stderr
