"""Constrained output: any label set, or a structured question, scored per request on the device's encoders,
held to transformers' own zero-shot answer for the same tiny model."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from runtime.classify import Classifier, ClassifyLimits, Question, QuestionCategory
from runtime.clip import ClipRuntime
from runtime.interrogator import Interrogator
from runtime.label_cache import CacheSettings, LabelCache
from runtime.label_tables import LabelTables, normalize
from runtime.model_io import ExportInfo
from runtime.preprocess import Fidelity, open_image
from tests.helpers import IMAGES, REPO, device_set, transformers_reference
from tests.once import hardlinked_copy
from tests.test_server import photo

CLASSIFY = "/clip/v1/classify"
NEW_LABELS = [
    "a sleeping dog on a sofa",
    "a diagram of a bridge",
    "a steaming bowl of soup",
    "an astronaut on the moon",
]


def _classifier(interrogator: Interrogator, folder: Path, **limits: int) -> Classifier:
    return Classifier.open(interrogator, ClassifyLimits(**limits), CacheSettings(folder=folder))


@pytest.mark.parametrize("family", ["clip", "siglip"])
@pytest.mark.parametrize(("models", "tolerance"), [("export", 2e-3), ("device", 0.08)])
def test_new_labels_score_as_the_float_model_s_zero_shot_logits(
    family: str, models: str, tolerance: float, family_build: Callable[[str], Path], tmp_path: Path
) -> None:
    """Against transformers' model(...).logits_per_image for the same image and labels: CLIP's softmax over
    the labels, SigLIP's own sigmoid with its bias. The float export within the label rows' float16; the
    device's set (the U16 preview: both encoders quantized, and a tiny random model's 64 dimensions make
    the most of it) within its quantization."""
    import torch

    artifacts = family_build(family)
    directory = artifacts / "export" if models == "export" else device_set(artifacts.parent / "device" / "models")
    runtime = ClipRuntime.load(directory, fidelity=Fidelity.EXACT)
    interrogator = Interrogator(runtime, LabelTables.load(artifacts / "embed-vocab"))
    image = open_image(IMAGES / "cat.jpg")
    vector = normalize(interrogator.clip.encode_image(image))
    answer = _classifier(interrogator, tmp_path).classify(vector, Question.of_labels(NEW_LABELS))
    assert (answer.text_encodes, answer.from_tables, answer.from_cache) == (len(NEW_LABELS), 0, 0)

    model, tokenizer, processor = transformers_reference(artifacts / "export")
    info = ExportInfo.read(artifacts / "export")
    texts = tokenizer(NEW_LABELS, padding="max_length", max_length=info.context_length, return_tensors="pt")
    if not info.facts.text.masked:
        texts.pop("attention_mask", None)
    texts.pop("token_type_ids", None)
    with torch.no_grad():
        logits = model(**texts, **processor(images=image, return_tensors="pt")).logits_per_image[0].numpy()
    expected = 1 / (1 + np.exp(-logits)) if family == "siglip" else np.exp(logits) / np.exp(logits).sum()
    scale = info.facts.scores
    cosines = (logits - (scale.logit_bias or 0.0)) / scale.logit_scale
    (category,) = answer.categories
    assert [pick.label for pick in category.picks] == [pick.label for pick in category.top]  # k: every label
    got = {pick.label: pick for pick in category.top}
    np.testing.assert_allclose([got[label].score for label in NEW_LABELS], cosines, atol=tolerance)
    np.testing.assert_allclose([got[label].probability for label in NEW_LABELS], expected, atol=tolerance)
    if family != "siglip":
        assert abs(sum(pick.probability for pick in got.values()) - 1) < 1e-3


def test_a_label_in_the_tables_scores_as_interrogate_scores_it_and_encodes_nothing(
    serve, interrogator: Interrogator, tmp_path: Path
) -> None:
    subject = next(c for c in interrogator.tables.categories if c.name == "subject")
    client = serve(label_cache=CacheSettings(folder=tmp_path))
    detailed = client.post("/clip/v1/interrogate", json={"image": photo()}).json()
    top = next(c for c in detailed["categories"] if c["name"] == "subject")["top"]
    labels = [pick["label"] for pick in top]
    question = {"name": "subject", "labels": labels, "template": subject.template, "mode": "one"}
    answer = client.post(CLASSIFY, json={"image": photo(), "categories": [question]}).json()
    assert (answer["text_encodes"], answer["from_tables"]) == (0, len(labels))
    scored = {pick["label"]: pick["score"] for pick in answer["categories"][0]["top"]}
    assert scored == {pick["label"]: pick["score"] for pick in top}
    assert answer["categories"][0]["picks"] == answer["categories"][0]["top"][:1]


def test_a_repeated_request_encodes_nothing_and_a_restart_keeps_the_cache(
    serve, interrogator: Interrogator, tmp_path: Path
) -> None:
    question = {
        "image": photo(),
        "categories": [
            {"name": "age", "labels": ["a child", "an adult", "an elderly person"], "mode": "one"},
            {"name": "setting", "labels": ["indoors", "outdoors"], "template": "a photo taken {}", "mode": "one"},
            {"name": "again", "labels": ["a child", "a child", "a cat"], "mode": "many", "threshold": -1},
        ],
    }
    first = serve(label_cache=CacheSettings(folder=tmp_path)).post(CLASSIFY, json=question).json()
    assert first["text_encodes"] == 6  # "a child" twice in a category and once more elsewhere: encoded once
    assert [c["labels"] for c in first["categories"]] == [3, 2, 2]
    assert [len(c["picks"]) for c in first["categories"]] == [1, 1, 2]  # many, threshold -1: every label
    holds = interrogator.clip.npu.stats.holds
    restarted = serve(label_cache=CacheSettings(folder=tmp_path))
    second = restarted.post(CLASSIFY, json=question).json()
    assert (second["text_encodes"], second["from_cache"]) == (0, 6)
    cache = restarted.get("/healthz").json()["label_cache"]
    assert cache["entries"] == 6 and cache["file"].startswith(str(tmp_path))
    assert second["categories"] == first["categories"]
    assert interrogator.clip.npu.stats.holds == holds + 1  # the image encode only


def test_the_shorthand_ranks_every_label_in_its_template(serve, tmp_path: Path) -> None:
    client = serve(label_cache=CacheSettings(folder=tmp_path))
    labels = ["text", "a cat", "a landscape"]
    answer = client.post(CLASSIFY, json={"image": photo(), "labels": labels, "template": "a photo of {}"}).json()
    (category,) = answer["categories"]
    assert category["name"] == "labels" and category["mode"] == "top"
    assert sorted(p["label"] for p in category["picks"]) == sorted(labels)
    assert [p["score"] for p in category["picks"]] == sorted((p["score"] for p in category["picks"]), reverse=True)
    assert set(answer["timings_ms"]) >= {"decode", "encode", "text_encode", "score"}


def test_questions_over_the_bounds_are_refused_at_once_and_the_server_serves_on(
    serve, interrogator: Interrogator, tmp_path: Path
) -> None:
    limits = ClassifyLimits(max_categories=2, max_labels=6, max_label_chars=20, max_text_encodes=3)
    client = serve(classify=limits, label_cache=CacheSettings(folder=tmp_path))
    big_image = "A" * 4_000_000  # never decoded: the bounds are checked first
    holds = interrogator.clip.npu.stats.holds

    def refused(body: dict, *fragments: str) -> None:
        response = client.post(CLASSIFY, json={"image": big_image, **body})
        assert response.status_code == 422, response.text
        answer = response.json()
        assert set(answer) == {"error", "detail", "body", "errors"}
        for fragment in fragments:
            assert fragment in str(answer["detail"]), answer["detail"]

    one = {"name": "a", "labels": ["x"]}
    refused({"categories": [one, {**one, "name": "b"}, {**one, "name": "c"}]}, "3 categories", "at most 2")
    refused({"labels": [str(i) for i in range(7)]}, "7 labels", "--classify-max-labels")
    refused({"labels": ["y" * 21]}, "21 characters", "--classify-max-label-chars")
    refused({"labels": []}, "at least 1")
    refused({"labels": ["ok", "  "]}, "label 1 is empty")
    refused({"labels": ["a"], "template": "a photo"}, "must hold {} once")
    refused({"labels": ["a"], "categories": [one]}, "send `categories`")
    refused({"categories": [one, one]}, "'a' appear more than once")
    refused({"categories": [{**one, "mode": "some"}]}, "one")
    assert interrogator.clip.npu.stats.holds == holds
    over = client.post(CLASSIFY, json={"image": photo(), "labels": ["p", "q", "r", "s"]})
    assert over.status_code == 422 and "4 labels are new" in over.json()["detail"]
    assert "--classify-max-encodes" in over.json()["detail"]
    fine = client.post(CLASSIFY, json={"image": photo(), "labels": ["p", "q", "r"]})
    assert fine.status_code == 200 and fine.json()["text_encodes"] == 3
    assert client.post(CLASSIFY, json={"image": photo(), "labels": ["p", "q", "r", "s"]}).json()["text_encodes"] == 1


def test_classify_asks_for_the_same_auth(serve, tmp_path: Path) -> None:
    client = serve(credentials={"me": "secret"}, label_cache=CacheSettings(folder=tmp_path))
    assert client.post(CLASSIFY, json={"image": photo(), "labels": ["a"]}).status_code == 401
    assert client.post(CLASSIFY, json={"image": photo(), "labels": ["a"]}, auth=("me", "secret")).status_code == 200


def test_the_cache_keeps_the_most_recent_within_its_count_and_bytes(tmp_path: Path) -> None:
    file = tmp_path / "cache.npz"
    cache = LabelCache(file, "sha", 4, CacheSettings(entries=3, bytes=10_000))
    rows = {name: np.full(4, i, np.float16) for i, name in enumerate("abcd")}
    for name in "abc":
        cache.put(name, rows[name])
    assert cache.get("a") is not None  # now the most recent
    cache.put("d", rows["d"])
    assert cache.get("b") is None and [cache.get(n) is not None for n in "acd"] == [True, True, True]
    cache.save()
    again = LabelCache(file, "sha", 4, CacheSettings(entries=3, bytes=10_000))
    assert len(again) == 3 and np.array_equal(again.get("d"), rows["d"])
    small = LabelCache(None, "sha", 4, CacheSettings(entries=100, bytes=2 * (8 + 1)))
    for name in "abc":
        small.put(name, rows[name])
    assert len(small) == 2 and small.size_bytes <= 18 and small.get("a") is None


def test_a_cache_file_of_another_encoder_or_damaged_is_not_used_and_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "cache.npz"
    cache = LabelCache(file, "one encoder", 4, CacheSettings())
    cache.put("a", np.ones(4, np.float16))
    cache.save()
    with caplog.at_level(logging.WARNING):
        assert len(LabelCache(file, "another encoder", 4, CacheSettings())) == 0
        file.write_bytes(file.read_bytes()[:50])
        damaged = LabelCache(file, "one encoder", 4, CacheSettings())
    assert len(damaged) == 0 and caplog.text.count("not used") == 2
    damaged.put("b", np.ones(4, np.float16))
    damaged.save()
    assert LabelCache(file, "one encoder", 4, CacheSettings()).get("b") is not None


def test_the_cache_sits_in_fetch_s_folder_for_a_fetched_set(interrogator: Interrogator) -> None:
    from runtime.label_cache import cache_file

    models = interrogator.clip.models_dir
    file = cache_file(models, "f" * 64)
    assert file.parent == models.parent.parent / "label-cache" and file.parent.parent.name == "clip-axera"


def test_a_question_file_validates_as_the_request_does() -> None:
    question = Question.model_validate(
        {"categories": [{"name": "screen", "labels": ["a photo of text", "a photo"], "mode": "one"}]}
    )
    assert question.categories[0] == QuestionCategory(name="screen", labels=["a photo of text", "a photo"], mode="one")
    assert question.digest() != Question.of_labels(["a photo of text", "a photo"]).digest()


def _invoke_classify(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "invoke", "classify", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, timeout=300)


def test_invoke_classify_answers_a_folder_in_jsonl_and_a_table_and_resumes(
    built_artifacts: Path, tmp_path: Path
) -> None:
    models = hardlinked_copy(built_artifacts.parent / "device" / "models", tmp_path / "models")
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for image in sorted(IMAGES.glob("*.jpg"))[:3]:
        shutil.copy(image, photos / image.name)
    shutil.copy(IMAGES / "cat.jpg", photos / "sub" / "cat.jpg")
    out = tmp_path / "out"
    common = ("--images", str(photos), "--models", str(models), "--out", str(out))

    first = _invoke_classify(*common, "--labels", "a photo of text, a photo")
    assert first.returncode == 0, first.stderr
    assert "classified 4, already done 0" in first.stdout and str(out / "classify.csv") in first.stdout
    lines = [json.loads(line) for line in (out / "classify.jsonl").read_text().splitlines()]
    assert sorted(line["file"] for line in lines) == sorted(["sub/cat.jpg", *(p.name for p in photos.glob("*.jpg"))])
    assert lines[0]["text_encodes"] == 2 and all(line["text_encodes"] == 0 for line in lines[1:])
    table = list(csv.reader((out / "classify.csv").open(encoding="utf-8")))
    assert table[0] == ["image", "labels"] and len(table) == 5
    by_file = {line["file"]: line for line in lines}
    for file, picks in table[1:]:
        assert picks == ", ".join(p["label"] for p in by_file[file]["categories"][0]["picks"])
    assert list((models / "clip-axera" / "label-cache").glob("*.npz"))  # beside the set, for the next run

    again = _invoke_classify(*common, "--labels", "a photo of text, a photo")
    assert again.returncode == 0 and "classified 0, already done 4" in again.stdout

    question = tmp_path / "question.yaml"
    question.write_text(
        yaml.safe_dump(
            {
                "categories": [
                    {"name": "age", "labels": ["a child", "an adult", "an elderly person"], "mode": "one"},
                    {"name": "screen", "labels": ["a photo of text", "a photo"], "mode": "one"},
                ]
            }
        )
    )
    other = _invoke_classify(*common, "--question", str(question))
    assert other.returncode == 1 and "holds answers to another question" in other.stderr.strip().splitlines()[-1]
    replaced = _invoke_classify(*common, "--question", str(question), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    table = list(csv.reader((out / "classify.csv").open(encoding="utf-8")))
    assert table[0] == ["image", "age", "screen"] and len(table) == 5
    assert all(row[1] in {"a child", "an adult", "an elderly person"} for row in table[1:])

    question.write_text("categories:\n  - name: age\n    labels: []\n")
    bad = _invoke_classify(*common, "--question", str(question))
    last = bad.stderr.strip().splitlines()[-1]
    assert (
        bad.returncode == 1
        and last.startswith("error: ")
        and "categories.0.labels" in last
        and "Traceback" not in bad.stderr
    )
    neither = _invoke_classify(*common)
    assert neither.returncode == 1 and "pass --labels" in neither.stderr
