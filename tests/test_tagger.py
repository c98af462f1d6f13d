"""WD booru taggers on the device runtime and the server: tiny random taggers of the v3 families (ViT,
ConvNeXt, SwinV2) in the published interface, against the way the wd-tagger Space runs them."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from common.errors import ModelFilesError
from modeling.wd_tagger import write_random_tagger
from runtime.npu import NpuLock
from runtime.tagger import Tagger, TagThresholds

REPO = Path(__file__).resolve().parent.parent
PHOTOS = sorted((REPO / "data/images").glob("*.jpg"))[:4]


@pytest.fixture(scope="module")
def taggers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("taggers")
    return {family: write_random_tagger(root / f"tiny-{family}", family) for family in ("vit", "convnext", "swinv2")}


def space_probabilities(folder: Path, image: Image.Image) -> dict[str, float]:
    """What the wd-tagger Space's app computes (prepare_image, then the model; its steps as it writes them):
    an RGBA canvas on white, a centred white square, bicubic to the model's side, RGB to BGR."""
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]
    canvas = Image.new("RGBA", image.size, (255, 255, 255))
    canvas.alpha_composite(image.convert("RGBA"))
    image = canvas.convert("RGB")
    side = max(image.size)
    padded = Image.new("RGB", (side, side), (255, 255, 255))
    padded.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
    if side != size:
        padded = padded.resize((size, size), Image.BICUBIC)
    array = np.expand_dims(np.asarray(padded, dtype=np.float32)[:, :, ::-1], 0)
    probabilities = session.run(None, {session.get_inputs()[0].name: array})[0][0]
    names = [line.split(",")[1] for line in (folder / "selected_tags.csv").read_text().splitlines()[1:]]
    return dict(zip(names, probabilities.astype(float).tolist(), strict=True))


def transparent_wide() -> Image.Image:
    """A wide image with a transparent half: padding and compositing both show."""
    image = Image.open(PHOTOS[0]).convert("RGBA").resize((120, 50))
    pixels = np.asarray(image).copy()
    pixels[:, :60, 3] = 0
    return Image.fromarray(pixels)


@pytest.mark.parametrize("family", ["vit", "convnext", "swinv2"])
def test_each_family_tags_as_the_wd_tagger_space_does(taggers: dict[str, Path], family: str) -> None:
    tagger = Tagger(taggers[family], NpuLock())
    for image in [Image.open(path) for path in PHOTOS] + [transparent_wide()]:
        expected = space_probabilities(taggers[family], image)
        got = dict(zip(tagger.tags.names, tagger.probabilities(tagger.pixels(image)).tolist(), strict=True))
        assert got.keys() == expected.keys()
        assert max(abs(got[name] - expected[name]) for name in got) < 1e-5
        answer = tagger.tags.answer(np.array([got[name] for name in tagger.tags.names]), TagThresholds(0.5, 0.5))
        assert list(answer.ratings) == ["general", "sensitive", "questionable", "explicit"]  # the list's order
        assert list(answer.general) == sorted(answer.general, key=lambda n: -expected[n])  # best first
        categories = dict(zip(tagger.tags.names, tagger.tags.categories.tolist(), strict=True))
        assert set(answer.general) == {n for n, p in expected.items() if categories[n] == 0 and p >= 0.5}
        assert set(answer.character) == {n for n, p in expected.items() if categories[n] == 4 and p >= 0.5}


def test_a_tagger_folder_that_does_not_fit_is_named(taggers: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelFilesError, match=r"no model\.axmodel or model\.onnx"):
        Tagger(tmp_path, NpuLock())
    folder = tmp_path / "bad-tags"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((taggers["vit"] / "model.onnx").read_bytes())
    (folder / "selected_tags.csv").write_text("name,category\n1girl,0\n")
    with pytest.raises(ModelFilesError, match=r"first line must be tag_id,name,category,count"):
        Tagger(folder, NpuLock())
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n0,1girl,zero,5\n")
    with pytest.raises(ModelFilesError, match=r"line 2: expected tag_id,name,category,count"):
        Tagger(folder, NpuLock())
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n0,1girl,0,5\n")
    tagger = Tagger(folder, NpuLock())
    with pytest.raises(ModelFilesError, match=r"gives 19 outputs but selected_tags\.csv names 1 tags"):
        tagger.probabilities(tagger.pixels(Image.open(PHOTOS[0])))


def _b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_the_server_answers_the_wd14_tagger_extension_s_api_and_a1111_s_deepdanbooru(
    serve, taggers: dict[str, Path]
) -> None:
    """/tagger/v1 as toriato's extension answers it (webuiapi's TaggerInterface calls it), and A1111's
    `deepdanbooru` from the tagger: tags at or above interrogate_deepbooru_score_threshold, ratings left
    out, alphabetical, `_` as spaces and parentheses escaped (A1111's deepbooru_* defaults)."""
    import webuiapi

    folder = taggers["vit"]
    client = serve(tagger=folder)
    port = int(str(client.base_url).rsplit(":", 1)[1].rstrip("/"))
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
    tagger_api = webuiapi.TaggerInterface(api)
    assert tagger_api.tagger_interrogators() == {"models": ["tiny-vit"]}
    image = Image.open(PHOTOS[1])
    expected = space_probabilities(folder, image)
    ratings = ("general", "sensitive", "questionable", "explicit")
    answer = tagger_api.tagger_interrogate(image, model="tiny-vit", threshold=0.5).info  # the `caption` mapping
    assert list(answer)[:4] == list(ratings)
    tags = {n: p for n, p in expected.items() if n not in ratings and p >= 0.5}
    assert tags and len(tags) < len(expected) - 4  # the bar keeps some tags and drops others
    assert list(answer)[4:] == sorted(tags, key=lambda n: -tags[n])
    assert all(abs(answer[n] - expected[n]) < 1e-5 for n in answer)
    default = client.post("/tagger/v1/interrogate", json={"image": _b64(image), "model": "tiny-vit"}).json()
    assert set(default["caption"]) - set(ratings) == {n for n in tags} | {
        n for n, p in expected.items() if n not in ratings and 0.35 <= p < 0.5
    }  # the extension's default threshold, 0.35
    refused = client.post("/tagger/v1/interrogate", json={"image": _b64(image), "model": "wd14-vit-v2-git"})
    assert refused.status_code == 404 and refused.json()["detail"] == "Model not found"

    a1111 = client.post("/sdapi/v1/interrogate", json={"image": _b64(image), "model": "deepdanbooru"})
    assert a1111.status_code == 200

    def written(name: str) -> str:
        spaced = name if not re.search(r"[A-Za-z0-9]", name) else name.replace("_", " ")
        return re.sub(r"([\\()])", r"\\\1", spaced)

    assert a1111.json()["caption"] == ", ".join(written(n) for n in sorted(tags))
    assert client.post("/sdapi/v1/interrogate", json={"image": _b64(image), "model": "clip"}).status_code == 200
    health = client.get("/healthz").json()["tagger"]
    assert (health["name"], health["file"], health["tags"], health["model"]["state"]) == (
        "tiny-vit", "model.onnx", 19, "loaded"
    )  # fmt: skip


def test_without_a_tagger_the_tagger_api_lists_none_and_deepdanbooru_stays_clip_s(serve) -> None:
    client = serve()
    assert client.get("/tagger/v1/interrogators").json() == {"models": []}
    assert client.get("/healthz").json()["tagger"] is None
    image = _b64(Image.open(PHOTOS[0]))
    refused = client.post("/tagger/v1/interrogate", json={"image": image, "model": "wd14-vit-v2-git"})
    assert refused.status_code == 404 and refused.json()["detail"] == "Model not found"
    assert client.post("/sdapi/v1/interrogate", json={"image": image, "model": "deepdanbooru"}).status_code == 200


def test_invoke_caption_with_a_tagger_writes_kohya_style_booru_tags(taggers: dict[str, Path], tmp_path: Path) -> None:
    """`invoke caption --tagger`: the tags kohya's tag_images_by_wd14_tagger.py writes with --thresh,
    --character_tags_first, --use_rating_tags, --remove_underscore and --undesired_tags, from the same
    probabilities the Space computes; resumable as any caption run."""
    import json
    import subprocess
    import sys

    folder, photos = taggers["convnext"], tmp_path / "set"
    photos.mkdir()
    for index, path in enumerate(PHOTOS[:3]):
        (photos / f"{index}.jpg").write_bytes(path.read_bytes())
    command = [sys.executable, "-m", "invoke", "caption", "--images", str(photos), "--tagger", str(folder)]
    flags = ["--threshold", "0.5", "--character-first", "--rating", "--spaces", "--exclude", "smile"]
    done = subprocess.run([*command, *flags], cwd=REPO, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "captioned 3, already done 0" in done.stdout
    categories = {
        row.split(",")[1]: int(row.split(",")[2]) for row in (folder / "selected_tags.csv").read_text().splitlines()[1:]
    }

    def spaced(name: str) -> str:
        return name.replace("_", " ") if re.search(r"[A-Za-z0-9]", name) else name

    for index, path in enumerate(PHOTOS[:3]):
        expected = space_probabilities(folder, Image.open(path))
        ratings = [n for n in expected if categories[n] == 9]
        rating = max(ratings, key=lambda n: expected[n])
        characters = sorted(
            (n for n in expected if categories[n] == 4 and expected[n] >= 0.85), key=lambda n: -expected[n]
        )
        general = sorted((n for n in expected if categories[n] == 0 and expected[n] >= 0.5), key=lambda n: -expected[n])
        assert general and len(general) < sum(c == 0 for c in categories.values())  # the bar keeps some
        written = [spaced(n) for n in [rating, *characters, *general] if n != "smile"]
        assert (photos / f"{index}.txt").read_text().strip() == ", ".join(written)
    records = [json.loads(line) for line in (photos / "captions.jsonl").read_text().splitlines()]
    assert [r["tagger"] for r in records] == ["tiny-convnext"] * 3 and len(records[0]["ratings"]) == 4
    again = subprocess.run([*command, *flags], cwd=REPO, capture_output=True, text=True, check=False, timeout=300)
    assert again.returncode == 0 and "captioned 0, already done 3" in again.stdout
    fleet = subprocess.run([*command, "--host", "all"], cwd=REPO, capture_output=True, text=True, check=False)
    assert fleet.returncode == 1 and "is a folder on this machine: it tags here, not on --host" in fleet.stderr


@pytest.mark.parametrize("family", ["vit", "convnext", "swinv2"])
def test_a_published_tagger_becomes_a_static_graph_the_ax650_takes(
    taggers: dict[str, Path], family: str, tmp_path: Path
) -> None:
    """Batch 1, simplified, the same probabilities as the published graph, every operator in the AX650's
    table (Axera's op_support_list_ax650)."""
    from modeling.op_tables import AX650
    from modeling.tagger_graph import static_tagger, tagger_operator_checks

    published, static = taggers[family] / "model.onnx", tmp_path / "model.onnx"
    graph = static_tagger(published, static)
    assert graph.nodes_static < graph.nodes_published
    session = ort.InferenceSession(str(static), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 64, 64, 3] and session.get_outputs()[0].shape == [1, 19]
    pixels = (np.random.default_rng(1).random((1, 64, 64, 3)) * 255).astype(np.float32)
    reference = ort.InferenceSession(str(published), providers=["CPUExecutionProvider"]).run(None, {"input": pixels})
    assert np.abs(session.run(None, {"input": pixels})[0] - reference[0]).max() < 1e-5
    checks = tagger_operator_checks(static, AX650)
    assert checks and all(check.passed for check in checks), [c for c in checks if not c.passed]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit", "convnext", "swinv2"])
def test_base_size_taggers_make_static_graphs_of_only_ax650_operators(family: str, tmp_path: Path) -> None:
    """The v3 taggers' backbones at 448 (ViT-B/16, ConvNeXt-B, SwinV2-B; random weights, 10,861 outputs):
    the real graphs' operators must fit the NPU's table once made static."""
    from modeling.op_tables import AX650
    from modeling.tagger_graph import static_tagger, tagger_operator_checks

    folder = write_random_tagger(tmp_path / family, family, base=True)
    static_tagger(folder / "model.onnx", tmp_path / "static.onnx")
    failures = [c for c in tagger_operator_checks(tmp_path / "static.onnx", AX650) if not c.passed]
    assert failures == [], failures
    session = ort.InferenceSession(str(tmp_path / "static.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 448, 448, 3] and session.get_outputs()[0].shape == [1, 10_861]
