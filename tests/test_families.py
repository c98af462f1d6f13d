"""Every model family end to end on a tiny random model of it, held to transformers' own outputs for the
same model: token ids exactly, pixels, embedding cosines (through the U16 local preview), probabilities."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.errors import ModelFilesError
from pipeline.graph import StageGraph
from pipeline.runner import RunRequest, run
from runtime.backends import OnnxRuntimeBackend
from runtime.clip import VOCAB_DIR, ClipRuntime
from runtime.interrogator import Interrogator, Scores
from runtime.label_tables import LabelTables
from runtime.model_io import ExportInfo, Pooling
from runtime.preprocess import Fidelity, open_image, preprocess
from runtime.tokenizer import TextTokenizer
from stages import ALL_STAGES
from stages.config import PipelineConfig
from tests.helpers import FAMILIES, IMAGES, MODELS, REPO, device_set, transformers_reference
from tests.loopback import app_clients

PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT, oil painting!",
    "一张猫的照片",
    "日本語のテキスト and emoji 🐱🚀",
    "  lots   of\twhitespace \n and newlines  ",
    "",
    "word " * 100,
]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _features(output: object) -> np.ndarray:
    return (output if hasattr(output, "numpy") else output.pooler_output).detach().numpy()  # type: ignore[union-attr]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_records_its_own_facts(family: str, family_build: Callable[[str], Path]) -> None:
    info = ExportInfo.read(family_build(family) / "export")
    facts = info.facts
    assert facts.family == family
    expected = {
        "clip": (Pooling.FIRST_EOS, True, False, "right", 77, None),
        "siglip": (Pooling.LAST, False, False, "left", 64, -12.0),
        "chinese_clip": (Pooling.FIRST, False, True, "right", 52, None),
    }[family]
    text = facts.text
    assert (text.pooling, text.causal, text.masked, text.pad_side, info.context_length) == expected[:5]
    assert facts.scores.logit_bias == (pytest.approx(expected[5]) if expected[5] is not None else None)
    assert (facts.preprocess.shortest_edge is None) == (family != "clip")  # SigLIP, Chinese-CLIP stretch
    verification = json.loads((family_build(family) / "verify/verification.json").read_text())
    assert all(check["passed"] for check in verification["checks"]), verification["checks"]


@pytest.mark.parametrize("family", MODELS)
def test_token_ids_are_transformers_own(family: str, family_build: Callable[[str], Path]) -> None:
    export = family_build(family) / "export"
    info = ExportInfo.read(export)
    assert info.facts.family == family.removesuffix("_sentencepiece")
    _, tokenizer, _ = transformers_reference(export)
    ours, cut = TextTokenizer.of_export(export, info).encode_batch(PROMPTS)
    expected = tokenizer(PROMPTS, padding="max_length", max_length=info.context_length, truncation=True)
    assert ours.tolist() == expected["input_ids"]
    assert cut.tolist() == [p == "word " * 100 for p in PROMPTS]


@pytest.mark.parametrize("family", FAMILIES)
def test_pixels_are_transformers_own_on_non_square_photos(family: str, family_build: Callable[[str], Path]) -> None:
    export = family_build(family) / "export"
    config = ExportInfo.read(export).facts.preprocess
    _, _, processor = transformers_reference(export)
    photos = [open_image(p) for p in sorted(IMAGES.glob("*.jpg"))[:2]]
    photos += [photos[0].resize((300, 171)), photos[0].resize((90, 333))]
    for photo in photos:
        theirs = processor(images=photo, return_tensors="np")["pixel_values"]
        assert float(np.abs(preprocess(photo, config) - theirs).max()) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_device_embeddings_and_probabilities_are_the_model_s(family: str, family_build: Callable[[str], Path]) -> None:
    """The device's set (the U16 local preview) embeds a photo as transformers does, within quantization
    (exact preprocessing: what the fast path costs, verify measures);
    every pick's probability is the model's own: SigLIP's sigmoid with its scale and bias, CLIP's and
    Chinese-CLIP's softmax over the category."""
    import torch

    artifacts = family_build(family)
    export = artifacts / "export"
    models = device_set(artifacts.parent / "device" / "models")
    runtime = ClipRuntime.load(models, fidelity=Fidelity.EXACT)
    interrogator = Interrogator(runtime, LabelTables.load(models / VOCAB_DIR))
    model, tokenizer, processor = transformers_reference(export)
    photo = open_image(IMAGES / "cat.jpg")
    with torch.no_grad():
        reference = _features(model.get_image_features(**processor(images=photo, return_tensors="pt")))[0]
    ours = interrogator.clip.encode_image(photo)
    pixels = interrogator.clip.preprocess(photo)
    float_model = OnnxRuntimeBackend(export / "image_encoder.onnx").run({"pixel_values": pixels})["image_embeds"][0]
    assert _cosine(float_model, reference) > 0.99999  # export is exact: what remains is quantization
    assert _cosine(ours, reference) >= 0.98  # compile's bar (Axera's documented 0.98)

    scores = Scores.of(interrogator.tables, ours)
    category = next(c for c in interrogator.tables.categories if c.name == "subject")
    picks = scores.exact(category, np.arange(len(category.labels)))
    prompts = [category.prompt(label) for label in category.labels]
    info = ExportInfo.read(export)
    text_inputs = tokenizer(prompts, padding="max_length", max_length=info.context_length, return_tensors="pt")
    if not info.facts.text.masked:
        text_inputs.pop("attention_mask", None)
    text_inputs.pop("token_type_ids", None)
    with torch.no_grad():
        texts = _features(model.get_text_features(**text_inputs))
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    image = ours / np.linalg.norm(ours)
    logits = float(model.logit_scale.detach().exp()) * (texts @ image)
    if family == "siglip":
        expected = 1 / (1 + np.exp(-(logits + float(model.logit_bias.detach()))))
    else:
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    by_label = {pick.label: pick.probability for pick in picks}
    got = np.array([by_label[label] for label in category.labels])
    np.testing.assert_allclose(got, expected, rtol=0.02, atol=1e-4)  # float16 label rows
    assert abs(got.sum() - 1) < 1e-3 if family != "siglip" else got.max() < 1


@pytest.mark.parametrize("family", ["siglip", "chinese_clip"])
def test_each_family_serves_a1111_and_captions_a_folder(
    family: str, family_build: Callable[[str], Path], tmp_path: Path
) -> None:
    artifacts = family_build(family)
    models = str(device_set(artifacts.parent / "device" / "models"))
    interrogator = Interrogator(ClipRuntime.load(Path(models)), LabelTables.load(Path(models) / VOCAB_DIR))
    image = base64.b64encode((IMAGES / "cat.jpg").read_bytes()).decode()
    with app_clients() as start:
        client = start(interrogator)
        answer = client.post("/sdapi/v1/interrogate", json={"image": image, "model": "clip"})
        assert answer.status_code == 200 and answer.json()["caption"].count(", ") >= 4
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(IMAGES.glob("*.jpg"))[:2]:
        (photos / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "caption",
            "--images",
            str(photos),
            "--out",
            str(out),
            "--models",
            str(models),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(records) == 2
    expected = interrogator.interrogate(interrogator.clip.open(photos / records[0]["file"])).caption
    assert records[0]["caption"] == expected


def test_label_tables_of_another_model_are_refused(family_build: Callable[[str], Path]) -> None:
    siglip = device_set(family_build("siglip").parent / "device" / "models")
    clip = device_set(family_build("clip").parent / "device" / "models")
    with pytest.raises(ModelFilesError, match=r"made by another model \(clip.*run `invoke embed-vocab`"):
        Interrogator(ClipRuntime.load(siglip), LabelTables.load(clip / VOCAB_DIR))


@pytest.mark.parametrize("family", ["siglip", "chinese_clip"])
def test_full_context_label_embeddings_for_families_that_are_not_causal(
    family: str, family_build: Callable[[str], Path]
) -> None:
    """embed-vocab cuts ids after the last end token only for CLIP: SigLIP (pooled at the last position)
    and Chinese-CLIP (bidirectional) rows must be what the fixed-shape text model gives."""
    artifacts = family_build(family)
    export, tables = artifacts / "export", artifacts / "embed-vocab"
    info = ExportInfo.read(export)
    assert not info.facts.text.cuttable
    fixed = OnnxRuntimeBackend(export / "text_encoder.onnx")
    tokenizer = TextTokenizer.of_export(export, info)
    index = json.loads((tables / "vocab.json").read_text())
    assert index["model"]["family"] == family
    for entry in index["categories"][:3]:
        rows = np.load(tables / entry["file"]).astype(np.float32)
        for i in range(0, len(entry["labels"]), 40):
            prompt = entry["template"].replace("{}", entry["labels"][i])
            reference = fixed.run({"input_ids": tokenizer.encode(prompt)})["text_embeds"][0]
            np.testing.assert_allclose(rows[i], reference / np.linalg.norm(reference), atol=2e-3)


def test_siglip_patch_convolution_has_explicit_padding(family_build: Callable[[str], Path]) -> None:
    import onnx

    model = onnx.load(str(family_build("siglip") / "export/image_encoder.onnx"))
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert convs and all(a.name != "auto_pad" for node in convs for a in node.attribute)
    assert all(list(a.ints) == [0, 0, 0, 0] for node in convs for a in node.attribute if a.name == "pads")


def test_stretch_resize_decodes_large_jpegs_reduced(family_build: Callable[[str], Path]) -> None:
    """The fast path for a stretching family: a 2560x1600 JPEG decodes at 1/4 (both sides stay >= 1.5x
    the 224 input) and embeds as the exact path does."""
    config = ExportInfo.read(family_build("siglip") / "export").facts.preprocess
    photo = REPO / "data/images/large/forest_path_2560.jpg"
    fast = open_image(photo, config, Fidelity.FAST)
    assert fast.size == (640, 400)
    exact = preprocess(open_image(photo), config).ravel()
    quick = preprocess(fast, config, Fidelity.FAST).ravel()
    assert float(exact @ quick / np.linalg.norm(exact) / np.linalg.norm(quick)) > 0.9995
    assert Image.open(photo).size == (2560, 1600)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["siglip", "chinese_clip"])
def test_each_family_compiles_with_pulsar2_and_runs_on_the_device(
    family: str,
    family_build: Callable[[str], Path],
    pulsar2_build: Callable[..., PipelineConfig],
    tmp_path: Path,
) -> None:
    """Pulsar2 (the stand-in image on a real Docker Engine, over SSH) takes each family's calibration
    archives and configs; the device (over SSH) runs the axmodels through axengine with S32 ids."""
    config = pulsar2_build(family_build(family), model={"id": FAMILIES[family]})
    artifacts = tmp_path / "artifacts"
    outcomes = {o.stage: o for o in run(config, StageGraph(ALL_STAGES), RunRequest(targets=("smoke-test",)))}
    assert all(o.outcome.value in ("ran", "up to date") for o in outcomes.values()), outcomes
    compiled = json.loads((artifacts / "compile/compiled.json").read_text())
    assert compiled["target"] == "pulsar2" and set(compiled["models"]) == {"image_encoder", "text_encoder"}
    report = json.loads((artifacts / "smoke-test/devices/pi/measurements.json").read_text())
    assert report["encoders"]["text"]["input_dtype"] == "int32"
    assert all(e["backend"] == "axengine" and e["cosine_min"] > 0.9999 for e in report["encoders"].values())
