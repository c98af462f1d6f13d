"""The device runtime: torch-free imports, backends, vocabulary tables, interrogation, captioning."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.errors import ModelFilesError
from runtime.backends import AxEngineBackend, OnnxRuntimeBackend, conform, open_backend
from runtime.captioning import CaptionRun, caption_folder
from runtime.errors import BackendUnavailable, InvalidImage
from runtime.interrogator import CaptionOptions, Interrogator, TagOptions, format_tags, tag_probability
from runtime.label_format import DEEPBOORU, LabelFormat, TagOrder
from runtime.label_tables import CategoryMode, LabelTables, TableModel, normalize
from runtime.model_io import ExportInfo, Pooling, ScoreScale
from runtime.preprocess import Fidelity, PreprocessConfig, open_image, preprocess
from runtime.tokenizer import TextTokenizer
from tests.helpers import device_set

CLIP_TABLES = TableModel("clip", Pooling.FIRST_EOS, ScoreScale(100.0))  # tables made by hand in a test

REPO = Path(__file__).resolve().parent.parent
STANDIN_PYTHON = REPO / "tests/standins/python"


def _device(built_artifacts: Path) -> Path:
    return device_set(built_artifacts.parent / "device" / "models")


def test_runtime_imports_and_runs_without_torch_transformers_or_onnx(built_artifacts: Path) -> None:
    modules = sorted(f"runtime.{p.stem}" for p in (REPO / "runtime").glob("*.py") if p.stem != "__init__")
    script = f"""
import importlib, json, sys
from pathlib import Path
for name in {modules!r}:
    importlib.import_module(name)
from runtime.clip import ClipRuntime, VOCAB_DIR
from runtime.interrogator import Interrogator
from runtime.label_tables import LabelTables, normalize
from runtime.preprocess import Fidelity, PreprocessConfig, open_image, preprocess
models = Path({str(_device(built_artifacts))!r})
caption = Interrogator(ClipRuntime.load(models), LabelTables.load(models / VOCAB_DIR)).interrogate(
    open_image(Path({str(REPO / "data/images/cat.jpg")!r}))).caption
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "onnx"))
print(json.dumps({{"heavy": heavy, "caption": caption}}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["heavy"] == []
    assert answer["caption"].count(", ") >= 5


@pytest.fixture
def standin_axengine(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(STANDIN_PYTHON))
    sys.modules.pop("axengine", None)
    yield
    sys.modules.pop("axengine", None)


def _axmodel(built_artifacts: Path, tmp_path: Path, npu_mode: str = "NPU3") -> Path:
    """A stand-in .axmodel of the text encoder, built with `src_dtype: S32` token ids as compile builds it."""
    from axmodel_notes import mark_axmodel

    axmodel = tmp_path / "text_encoder.axmodel"
    mark_axmodel(built_artifacts / "export/text_encoder.onnx", axmodel, npu_mode, {"input_ids": "S32"})
    return axmodel


def test_axengine_backend_feeds_int32_ids_to_an_s32_model(
    built_artifacts: Path, tmp_path: Path, standin_axengine
) -> None:
    axmodel = _axmodel(built_artifacts, tmp_path)
    backend = open_backend(axmodel, provider="AXCLRTExecutionProvider", device_id=0)
    assert isinstance(backend, AxEngineBackend) and backend.provider == "AXCLRTExecutionProvider"
    assert backend.inputs[0].dtype == np.int32
    ids = np.load(built_artifacts / "verify/golden/input_ids.npy")[:1]  # int64, as the tokenizer gives
    got = backend.run({"input_ids": ids})["text_embeds"]
    reference = OnnxRuntimeBackend(built_artifacts / "export/text_encoder.onnx").run({"input_ids": ids})
    np.testing.assert_allclose(got, reference["text_embeds"], atol=1e-6)


@pytest.mark.parametrize("release", ["tuple", "provider_options"])
def test_device_id_reaches_pyaxengine_whichever_argument_its_release_reads(
    built_artifacts: Path, tmp_path: Path, standin_axengine, monkeypatch: pytest.MonkeyPatch, release: str
) -> None:
    monkeypatch.setenv("AXENGINE_STANDIN_RELEASE", release)
    monkeypatch.setenv("AXENGINE_STANDIN_DEVICES", "2")
    backend = open_backend(_axmodel(built_artifacts, tmp_path), provider="AXCLRTExecutionProvider", device_id=1)
    assert backend._session.device_id == 1
    monkeypatch.setenv("AXENGINE_STANDIN_DEVICES", "1")
    with pytest.raises(BackendUnavailable, match="Device index 1 is out of range"):
        open_backend(_axmodel(built_artifacts, tmp_path), provider="AXCLRTExecutionProvider", device_id=1)


def test_an_npu3_model_refused_in_vnpu_mode_names_npu_mode(
    built_artifacts: Path, tmp_path: Path, standin_axengine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AXENGINE_STANDIN_VNPU", "ENABLED")
    with pytest.raises(BackendUnavailable, match=r"not allowed when vnpu.*npu_mode NPU1"):
        open_backend(_axmodel(built_artifacts, tmp_path, "NPU3"), provider="AxEngineExecutionProvider")
    single = open_backend(_axmodel(built_artifacts, tmp_path, "NPU1"), provider="AxEngineExecutionProvider")
    assert single.provider == "AxEngineExecutionProvider"


def test_missing_axengine_names_the_install_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m.axmodel"
    model.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "axengine", None)
    with pytest.raises(BackendUnavailable, match=r"axengine is not installed.*pyaxengine/releases"):
        open_backend(model)


def test_pyaxengine_without_a_driver_names_the_driver(
    tmp_path: Path, standin_axengine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AXENGINE_STANDIN_PROVIDERS", "")
    model = tmp_path / "m.axmodel"
    model.write_bytes(b"x")
    with pytest.raises(BackendUnavailable, match=r"installed but found no AX driver.*No providers found") as caught:
        open_backend(model)
    assert "not installed" not in str(caught.value)
    assert "libaxcl_rt" in str(caught.value)  # this machine has no AXCL: the package to install is named


def test_an_axcl_runtime_a_non_login_shell_cannot_find_is_named_with_the_ldconfig_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AXCL's guide says `source /etc/profile`; our commands run in shells that never read it."""
    from runtime import axera_libraries

    (tmp_path / "libaxcl_rt.so.1").write_bytes(b"")
    monkeypatch.setattr(axera_libraries, "AXCL_LIB_DIR", str(tmp_path))
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    found = axera_libraries.diagnose()
    assert f"libaxcl_rt.so is in {tmp_path}" in found and "/etc/ld.so.conf.d/axcl.conf && sudo ldconfig" in found


def test_inputs_are_checked_against_the_model() -> None:
    from runtime.backends import TensorInfo

    inputs = [TensorInfo("input_ids", (1, 4), np.dtype(np.int32))]
    assert conform({"input_ids": np.arange(4)[None]}, inputs)["input_ids"].dtype == np.int32
    with pytest.raises(ModelFilesError, match=r"shape \(1, 5\), the model takes \(1, 4\).*invoke fetch"):
        conform({"input_ids": np.arange(5)[None]}, inputs)
    with pytest.raises(ModelFilesError, match=r"the model takes \['input_ids'\], not \[\]"):
        conform({}, inputs)


def test_caption_joins_one_pick_per_category_in_order(interrogator: Interrogator) -> None:
    result = interrogator.interrogate(open_image(REPO / "data/images/astronaut.jpg"))
    in_caption = {c.name for c in interrogator.tables.categories if c.caption}
    names = [c.name for c in result.categories if c.name in in_caption]
    assert names == ["medium", "subject", "setting", "style", "lighting", "flavors", "tags"]
    picks = [p.label for c in result.categories if c.name in in_caption for p in c.picks]
    assert result.caption == ", ".join(picks)  # clip-interrogator's categories (caption: false) are not in it
    counts = {c.name: len(c.picks) for c in result.categories}
    assert counts["medium"] == counts["subject"] == 1 and counts["flavors"] == 3
    assert all(c.top[0].score >= c.top[-1].score for c in result.categories)


def test_scores_are_cosines_of_the_image_with_each_label(interrogator: Interrogator, built_artifacts: Path) -> None:
    image = open_image(REPO / "data/images/cat.jpg")
    embedding = interrogator.clip.encode_image(image)
    tables = interrogator.tables
    subject = next(c for c in tables.categories if c.name == "subject")
    # embed-vocab encodes with the float text model from export
    float_text = OnnxRuntimeBackend(built_artifacts / "export/text_encoder.onnx")
    tokenizer = TextTokenizer.of_export(interrogator.clip.models_dir, interrogator.clip.info)
    ids = tokenizer.encode(f"a photo of a {subject.labels[0]}")
    text = float_text.run({"input_ids": ids})["text_embeds"][0]
    expected = float(embedding @ text / np.linalg.norm(embedding) / np.linalg.norm(text))
    vector = normalize(embedding)
    assert tables.exact_scores(subject, np.array([0]), vector)[0] == pytest.approx(expected, abs=2e-3)  # fp16
    [(coarse, bound)] = tables.coarse_scores(subject, vector[None])
    assert abs(coarse[0] - expected) <= bound + 2e-3


def test_many_category_takes_every_label_above_its_threshold(interrogator: Interrogator) -> None:
    vector = normalize(interrogator.clip.encode_image(open_image(REPO / "data/images/cat.jpg")))
    tags = next(c for c in interrogator.tables.categories if c.name == "tags")
    scores = interrogator.tables.exact_scores(tags, np.arange(len(tags.labels)), vector)
    result = interrogator.interrogate(open_image(REPO / "data/images/cat.jpg"))
    picked = next(c for c in result.categories if c.name == "tags").picks
    assert len(picked) == int((scores >= tags.threshold).sum())


def test_caption_options_ranks_skip_and_dict_limit(interrogator: Interrogator) -> None:
    image = open_image(REPO / "data/images/rocket.jpg")
    ranks = LabelFormat(ranks=True)
    ranked = interrogator.interrogate(image, CaptionOptions(skip=frozenset({"flavors", "tags"}), format=ranks))
    parts = ranked.caption.split(", ")
    assert len(parts) == 5 and all(re.fullmatch(r"\(.+:-?[01]\.\d{3}\)", p) for p in parts)
    limited = interrogator.interrogate(image, CaptionOptions(dict_limit=3))
    for result, table in zip(limited.categories, interrogator.tables.categories, strict=True):
        assert {p.label for p in result.top} <= set(table.labels[:3])


def test_tags_follow_the_deepbooru_options(interrogator: Interrogator) -> None:
    image = open_image(REPO / "data/images/cat.jpg")
    tags = next(c for c in interrogator.tables.categories if c.name == "tags")
    vector = normalize(interrogator.clip.encode_image(image))
    scores = interrogator.tables.exact_scores(tags, np.arange(len(tags.labels)), vector)
    # the default threshold (0.5) is the category's own cosine threshold
    assert len(_split(interrogator.tag(image))) == int((scores >= tags.threshold).sum())
    ordered = np.sort(scores)
    middle = float(ordered[len(ordered) // 2] + ordered[len(ordered) // 2 + 1]) / 2  # between two scores
    half = TagOptions(threshold=tag_probability(middle, tags, interrogator.tables.index.model.scores))
    assert len(_split(interrogator.tag(image, half))) == int((scores > middle).sum())
    everything = _split(interrogator.tag(image, TagOptions(threshold=0.0)))  # A1111's default: alphabetical
    assert everything == sorted(everything) and len(everything) == len(tags.labels)
    by_score_format = replace(DEEPBOORU, order=TagOrder.SCORE, ranks=True)
    by_score = _split(interrogator.tag(image, TagOptions(threshold=0.0, format=by_score_format)))
    values = [float(t.rsplit(":", 1)[1].rstrip(")")) for t in by_score]
    assert values == sorted(values, reverse=True)
    assert interrogator.tag(image, TagOptions(threshold=1.0)) == ""
    first = everything[0]
    without = replace(DEEPBOORU, exclude=frozenset({first}))
    assert first not in _split(interrogator.tag(image, TagOptions(threshold=0.0, format=without)))


def _split(text: str) -> list[str]:
    return text.split(", ") if text else []


def test_tag_text_is_formatted_as_deepbooru_writes_it() -> None:
    found = {"smile": 0.9, "open_mouth": 0.7, "holding_(object)": 0.8}
    assert format_tags(found, TagOptions()) == r"holding \(object\), open mouth, smile"
    plain = TagOptions(format=LabelFormat(underscores=True, order=TagOrder.SCORE, ranks=True))
    assert format_tags(found, plain) == "(smile:0.900), (holding_(object):0.800), (open_mouth:0.700)"
    without = TagOptions(format=replace(DEEPBOORU, exclude=frozenset({"open mouth"})))
    assert format_tags(found, without) == r"holding \(object\), smile"


def test_batch_captioning_is_resumable_and_skips_unreadable_files(interrogator: Interrogator, tmp_path: Path) -> None:
    images = tmp_path / "set"
    (images / "sub").mkdir(parents=True)
    for name in ("cat.jpg", "coffee.jpg"):
        (images / name).write_bytes((REPO / "data/images" / name).read_bytes())
    (images / "sub/rocket.jpg").write_bytes((REPO / "data/images/rocket.jpg").read_bytes())
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "captions"
    first = caption_folder(interrogator, CaptionRun(images, out))
    assert first.captioned == 3 and first.skipped == 0 and [Path(f).name for f, _ in first.failed] == ["broken.png"]
    assert (out / "sub/rocket.txt").read_text().strip()
    records = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == ["cat.jpg", "coffee.jpg", "sub/rocket.jpg"]  # in order, decoded in a pool
    second = caption_folder(interrogator, CaptionRun(images, out))
    assert second.captioned == 0 and second.skipped == 3
    beside = caption_folder(interrogator, CaptionRun(images))
    assert beside.captioned == 3 and (images / "cat.txt").is_file()


def test_two_images_named_alike_but_for_the_extension_get_a_caption_each(
    interrogator: Interrogator, tmp_path: Path
) -> None:
    """`a.jpg` and `a.png` both wrote `a.txt`: one caption was lost and a rerun counted both as done."""
    from PIL import Image

    images = tmp_path / "set"
    images.mkdir()
    (images / "a.jpg").write_bytes((REPO / "data/images/cat.jpg").read_bytes())
    Image.open(REPO / "data/images/rocket.jpg").save(images / "A.png")  # one file with a.txt on a Mac's disk
    (images / "b.jpg").write_bytes((REPO / "data/images/coffee.jpg").read_bytes())
    first = caption_folder(interrogator, CaptionRun(images))
    assert first.captioned == 3
    assert sorted(p.name for p in images.glob("*.txt")) == ["A.png.txt", "a.jpg.txt", "b.txt"]
    expected = interrogator.interrogate(interrogator.clip.open(images / "A.png")).caption
    assert (images / "A.png.txt").read_text().strip() == expected
    again = caption_folder(interrogator, CaptionRun(images))
    assert again.captioned == 0 and again.skipped == 3


def test_an_image_of_too_many_pixels_is_unreadable_in_a_caption_run_before_it_is_decoded(
    interrogator: Interrogator, tmp_path: Path
) -> None:
    """Four 20 KB PNGs of 169 MP took `invoke caption` to 1.7 GB; the server refused them (> 40 MP)."""
    from PIL import Image

    images = tmp_path / "set"
    images.mkdir()
    Image.new("1", (13_000, 13_000)).save(images / "bomb.png")  # 169 MP in a small file
    (images / "cat.jpg").write_bytes((REPO / "data/images/cat.jpg").read_bytes())
    assert (images / "bomb.png").stat().st_size < 100_000
    summary = caption_folder(interrogator, CaptionRun(images))
    assert summary.captioned == 1 and [Path(path).name for path, _ in summary.failed] == ["bomb.png"]
    assert "13000x13000 is 169 MP, more than 40 MP" in summary.failed[0][1]
    with pytest.raises(ValueError, match="169 MP"):  # a fleet worker's bytes, the same bound
        interrogator.clip.open((images / "bomb.png").read_bytes())


def test_captioning_a_folder_with_a_pool_gives_what_one_image_at_a_time_gives(
    interrogator: Interrogator, tmp_path: Path
) -> None:
    images = tmp_path / "set"
    images.mkdir()
    photos = sorted((REPO / "data/images").rglob("*.jpg"))[:12]
    for index, photo in enumerate(photos):
        (images / f"{index:02d}-{photo.name}").write_bytes(photo.read_bytes())
    summary = caption_folder(interrogator, CaptionRun(images, tmp_path / "out"), workers=3)
    assert summary.captioned == len(photos)
    records = [json.loads(line) for line in (tmp_path / "out/captions.jsonl").read_text().splitlines()]
    expected = [interrogator.interrogate(interrogator.clip.open(path)).caption for path in sorted(images.iterdir())]
    assert [r["caption"] for r in records] == expected


def test_images_ranked_in_one_batch_get_the_captions_each_gets_alone(interrogator: Interrogator) -> None:
    """A caption run ranks the images the finisher has waiting in one pass over each category's 8-bit rows,
    each image quantized alone: the captions are the single-image path's, and a failed image keeps its place."""
    from runtime.captioning import CaptionTask
    from runtime.interrogator import CaptionOptions

    photos = sorted((REPO / "data/images").rglob("*.jpg"))[:9]
    encoded: list = [interrogator.embed(interrogator.clip.open(path)) for path in photos]
    failure = InvalidImage("broken.jpg: not a readable image")
    encoded.insert(4, failure)
    options = CaptionOptions(every_category=False)
    answers = CaptionTask(interrogator, options).finish_all(encoded)
    assert answers[4] is failure
    expected = [interrogator.interrogate(interrogator.clip.open(path), options).caption for path in photos]
    assert [answer[0] for answer in answers if not isinstance(answer, Exception)] == expected


def test_the_exact_pass_reads_small_categories_from_float32_copies_with_the_same_cosines(
    interrogator: Interrogator,
) -> None:
    """Small categories' rows are kept as float32 (FLOAT32_ROWS_BYTES in all, smallest first): the cosines are
    bit for bit those of the mapped float16 rows converted per call; past the budget a category stays mapped."""
    from runtime.label_tables import _float32_copies

    tables = interrogator.tables
    assert tables._float_rows  # the tiny build's small categories are copied
    vector = normalize(np.random.default_rng(3).standard_normal(tables.categories[0].rows.shape[1]))
    for category in tables.categories:
        rows = np.flatnonzero(np.random.default_rng(4).random(len(category.labels)) < 0.5)
        mapped = np.asarray(category.rows[rows], dtype=np.float32) @ vector
        assert np.array_equal(tables.exact_scores(category, rows, vector), mapped), category.name
    sizes = sorted(category.rows.size * 4 for category in tables.categories)
    copies = _float32_copies(tables.categories, sizes[0] + sizes[1])
    assert sorted(copy.nbytes for copy in copies.values()) == sizes[:2]


def test_a_tokenizer_without_its_pad_token_is_named(built_artifacts: Path, tmp_path: Path) -> None:
    from common.errors import ModelFilesError

    facts = ExportInfo.read(built_artifacts / "export").facts.text
    data = json.loads((built_artifacts / "export/tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|endoftext|>"]
    data["model"]["vocab"].pop("<|endoftext|>")
    broken = tmp_path / "tokenizer.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(ModelFilesError, match=rf"no pad id {facts.pad_id}: run `invoke export` again"):
        TextTokenizer(broken, facts, 77)
    broken.write_text("{not json")
    with pytest.raises(ModelFilesError, match=r"not a readable tokenizer\.json"):
        TextTokenizer(broken, facts, 77)


def test_fast_fidelity_decodes_a_large_jpeg_at_a_reduced_scale_close_to_exact() -> None:
    """A 2560x1600 photo decodes at 1/4 (640x400: its short side still >= 1.5x the 224 input); the
    preprocessed pixels stay within cosine 0.9995 of the exact path, which decodes every pixel."""
    config = PreprocessConfig()
    photo = REPO / "data/images/large/forest_path_2560.jpg"
    fast_image = open_image(photo, config, Fidelity.FAST)
    assert fast_image.size == (640, 400) and open_image(photo).size == (2560, 1600)
    exact = preprocess(open_image(photo), config).ravel()
    fast = preprocess(fast_image, config, Fidelity.FAST).ravel()
    assert float(exact @ fast / np.linalg.norm(exact) / np.linalg.norm(fast)) > 0.9995
    small = REPO / "data/images/cat.jpg"  # too small to reduce: both paths give the same pixels
    np.testing.assert_array_equal(
        preprocess(open_image(small, config, Fidelity.FAST), config, Fidelity.FAST),
        preprocess(open_image(small), config),
    )


@pytest.mark.parametrize("photo", sorted((REPO / "data/images/large").glob("*.jpg")), ids=lambda p: p.stem)
def test_fast_fidelity_changes_a_pick_only_between_labels_it_cannot_separate(
    interrogator: Interrogator, photo: Path
) -> None:
    """Issue 15: the picks of the shipped vocabulary (2,000+ labels) must agree, for a real 2560x1600 photo
    and its 1280x800 half. With unit label rows a score moves by at most |fast - exact| (Cauchy-Schwarz), so
    a pick may change only where the exact scores of the two labels are within twice that. The tiny
    random CLIP scores every label within ~0.01, so near-ties occur here (one pick of 42 swaps two labels
    0.000004 apart, the deviation being 0.005); the real model's scores spread far wider than that."""
    config = interrogator.clip.preprocess_config
    full = open_image(photo)
    halved = io.BytesIO()
    full.resize((full.width // 2, full.height // 2), Image.Resampling.LANCZOS).save(halved, "JPEG", quality=95)
    for source in (photo, halved.getvalue()):
        scores = {f: interrogator.score(preprocess(open_image(source, config, f), config, f))[0] for f in Fidelity}
        exact_vector = scores[Fidelity.EXACT].vector
        deviation = float(np.linalg.norm(scores[Fidelity.FAST].vector - exact_vector))
        assert deviation < 0.05  # cosine > 0.9987
        exact, fast = (interrogator.caption(scores[f])[1] for f in (Fidelity.EXACT, Fidelity.FAST))
        for category, want, got in zip(interrogator.tables.categories, exact, fast, strict=True):
            exact_score = {p.label: p.score for p in want.picks}
            boundary = category.threshold if category.mode is CategoryMode.MANY else min(exact_score.values())
            for pick in got.picks:
                if pick.label not in exact_score:
                    row = np.asarray(category.rows[pick.row], dtype=np.float32)
                    assert float(row @ exact_vector) >= boundary - 2 * deviation - 1e-3, (category.name, pick)


def test_two_pass_ranking_equals_an_exact_float_ranking(tmp_path: Path) -> None:
    """Dense random tables (many near-ties): picks must still equal a brute-force float ranking."""
    from modeling.rank_model import write_rank_model
    from runtime.interrogator import Scores, _above, _rank
    from runtime.label_tables import RANK_SUFFIX, CategoryEntry, CategoryMode, RankModel, VocabIndex, write_category

    rng = np.random.default_rng(7)
    file, rows = write_category(tmp_path, "flavors", rng.standard_normal((20000, 64)).astype(np.float32))
    np.testing.assert_array_equal(np.load(tmp_path / file), rows)
    rank = RankModel(f"flavors{RANK_SUFFIX}", **write_rank_model(tmp_path / f"flavors{RANK_SUFFIX}", rows))
    labels = [f"l{i}" for i in range(len(rows))]
    entry = CategoryEntry("flavors", CategoryMode.TOP, file, tuple(labels), threshold=0.3, k=5, rank=rank)
    VocabIndex("random", 64, (entry,), "", CLIP_TABLES).write(tmp_path)
    tables = LabelTables.load(tmp_path)
    for mode, k, threshold in ((CategoryMode.TOP, 5, 0.3), (CategoryMode.MANY, 3, 0.25), (CategoryMode.ONE, 1, 0.0)):
        category = tables.categories[0].__class__(
            **{**tables.categories[0].__dict__, "mode": mode, "k": k, "threshold": threshold}
        )
        vectors = [normalize(rng.standard_normal(64)) for _ in range(5)]
        batched = tables.coarse_scores(category, np.stack(vectors))  # each image quantized alone in the batch
        for vector, (coarse_in_batch, bound_in_batch) in zip(vectors, batched, strict=True):
            exact = rows.astype(np.float32) @ vector
            [(coarse, bound)] = tables.coarse_scores(category, vector[None])
            assert np.abs(coarse - exact).max() <= bound
            np.testing.assert_array_equal(coarse_in_batch, coarse)
            assert bound_in_batch == bound
            scores = Scores(tables, vector)
            result = _rank(scores, category)
            order = np.argsort(-exact, kind="stable")
            above = [labels[i] for i in order if exact[i] >= threshold]
            expected = above if mode == "many" else [labels[i] for i in order[:k]]
            assert [p.label for p in result.picks] == expected
            assert [p.label for p in _above(scores, category, threshold)] == above


@pytest.mark.parametrize("scale", [ScoreScale(100.0), ScoreScale(20.0, -3.0)], ids=["softmax", "sigmoid"])
def test_picks_carry_the_model_s_probability_and_sigmoid_families_pick_many_by_it(
    scale: ScoreScale, tmp_path: Path
) -> None:
    """CLIP-like tables: probabilities are a softmax over the whole category (every label, not just the
    rescored ones) and `many` keeps its cosine threshold. SigLIP-like tables (a bias): each probability is
    sigmoid(scale*cos + bias) and `many` keeps the labels whose probability reaches min_probability."""
    from modeling.rank_model import write_rank_model
    from runtime.interrogator import Scores, _rank
    from runtime.label_tables import RANK_SUFFIX, CategoryEntry, CategoryMode, RankModel, VocabIndex, write_category

    rng = np.random.default_rng(3)
    file, rows = write_category(tmp_path, "tags", rng.standard_normal((3000, 32)).astype(np.float32))
    rank = RankModel(f"tags{RANK_SUFFIX}", **write_rank_model(tmp_path / f"tags{RANK_SUFFIX}", rows))
    labels = tuple(f"t{i}" for i in range(len(rows)))
    entry = CategoryEntry("tags", CategoryMode.MANY, file, labels, threshold=0.3, min_probability=0.2, rank=rank)
    model = TableModel("siglip" if scale.sigmoid else "clip", Pooling.LAST, scale)
    VocabIndex("random", 32, (entry,), "", model).write(tmp_path)
    tables = LabelTables.load(tmp_path)
    vector = normalize(rng.standard_normal(32))
    scores = Scores.of(tables, vector)
    picks = _rank(scores, tables.categories[0]).picks
    exact = rows.astype(np.float64) @ vector
    logits = scale.logit_scale * exact
    if scale.sigmoid:
        probability = 1 / (1 + np.exp(-(logits + scale.logit_bias)))
        chosen = {labels[i] for i in np.flatnonzero(probability >= 0.2)}
    else:
        probability = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        chosen = {labels[i] for i in np.flatnonzero(exact >= 0.3)}
    assert picks and {p.label for p in picks} == chosen
    for pick in picks:
        assert pick.probability == pytest.approx(probability[pick.row], rel=1e-3)


def test_a_label_already_in_the_caption_is_not_picked_again_the_next_one_is(tmp_path: Path) -> None:
    """Vocabularies share words ("bubbles" is a flavor and a tag): a caption names each once, the first
    category keeping it, and a `top` category still gives its k labels."""
    from modeling.rank_model import write_rank_model
    from runtime.interrogator import Scores, caption
    from runtime.label_tables import RANK_SUFFIX, CategoryEntry, CategoryMode, RankModel, VocabIndex, write_category

    vector = normalize(np.array([1.0, 0.2, 0.1, 0.0]))
    first = np.array([[1.0, 0.2, 0.1, 0.0], [0.0, 1.0, 0.0, 0.0]], np.float32)  # "Bubbles" is the best here
    second = np.array([[1.0, 0.2, 0.1, 0.0], [0.9, 0.0, 0.4, 0.0], [0.8, 0.5, 0.0, 0.3], [0.0, 0.0, 0.0, 1.0]])
    entries = []
    for name, mode, labels, rows in (
        ("medium", CategoryMode.ONE, ("Bubbles", "ink"), first),
        ("flavors", CategoryMode.TOP, ("bubbles", "smoke", "floor", "metal"), second.astype(np.float32)),
    ):
        file, kept = write_category(tmp_path, name, rows)
        rank = RankModel(f"{name}{RANK_SUFFIX}", **write_rank_model(tmp_path / f"{name}{RANK_SUFFIX}", kept))
        entries.append(CategoryEntry(name, mode, file, labels, k=2, rank=rank))
    VocabIndex("random", 4, tuple(entries), "", CLIP_TABLES).write(tmp_path)
    scores = Scores.of(LabelTables.load(tmp_path), vector)
    text, results = caption(scores)
    assert text == "Bubbles, smoke, floor"
    assert [p.label for p in results[1].top][:1] == ["bubbles"]  # still ranked first in the structured view
    assert caption(scores, CaptionOptions(skip=frozenset({"medium"})))[0] == "bubbles, smoke"


def test_pick_agreement_is_whole_for_the_float_embeddings_and_low_for_a_damaged_model(built_artifacts: Path) -> None:
    """What the smoke test reports and judges: the device's picks against the float model's, per category."""
    from runtime.agreement import pick_agreement
    from runtime.clip import VOCAB_DIR
    from runtime.golden import GOLDEN_DIR, GoldenSet
    from runtime.smoke_test import SmokeReport
    from stages.smoke_test import _agreement_failures

    models = device_set(built_artifacts.parent / "device" / "models")
    tables = LabelTables.load(models / VOCAB_DIR)
    golden = GoldenSet.read(models / GOLDEN_DIR)
    photos = golden.references["image_embeds"].labels
    reference = golden.pair(models / GOLDEN_DIR, "image_embeds")[1]
    same = pick_agreement(tables, photos, reference, reference)
    assert same.top1_min == 1.0 and same.tags_jaccard in (1.0, None) and same.changed == ()
    assert set(same.device_captions) == set(photos)
    assert [c.category for c in same.categories] == [c.name for c in tables.categories]

    rng = np.random.default_rng(0)  # a model whose embeddings are mostly noise
    noise = rng.standard_normal(reference.shape) * np.linalg.norm(reference, axis=1, keepdims=True)
    damaged = pick_agreement(tables, photos, reference, reference + 3 * noise / np.sqrt(reference.shape[1]))
    assert damaged.top1_min == 0.0 and damaged.changed
    assert all(c.float_caption != c.device_caption for c in damaged.changed)
    failures = _agreement_failures(SmokeReport(agreement=damaged), minimum=0.5, device="pi")
    assert failures and "min_top1_agreement 0.5" in failures[0]
    assert _agreement_failures(SmokeReport(agreement=same), minimum=1.0, device="pi") == []
