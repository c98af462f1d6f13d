"""Vocabulary files and the embed-vocab stage: clear errors, tables reused while unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from labels.vocabulary import load_vocabulary
from pipeline.errors import ConfigError
from pipeline.graph import StageGraph
from pipeline.runner import Outcome, RunRequest, run
from runtime.answers import InterrogationAnswer
from runtime.label_tables import MergedLabel, VocabIndex
from stages import ALL_STAGES
from stages.embed_vocab import LabelReport

GRAPH = StageGraph(ALL_STAGES)
REPO = Path(__file__).resolve().parent.parent


def test_default_vocabulary_has_thousands_of_labels() -> None:
    _, categories = load_vocabulary(REPO / "vocab/default.yaml")
    assert sum(len(c.labels) for c in categories) >= 2000
    assert {c.spec.mode for c in categories} == {"one", "top", "many"}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "vocab.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("category", "message"),
    [
        ({"name": "medium", "mode": "best", "labels": ["a"]}, "categories.medium.mode: input should be 'one', 'many'"),
        ({"name": "medium", "template": "a photo", "labels": ["a"]}, "must contain {}"),
        ({"name": "medium"}, "give labels (a list) or labels_file"),
        ({"name": "medium", "labels": ["a"], "colour": "red"}, "categories.medium.colour: unknown key"),
        ({"name": "medium", "labels_file": "nope.txt"}, "labels_file: "),
    ],
)
def test_malformed_vocabulary_names_the_category_and_key(tmp_path: Path, category: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_vocabulary(_write(tmp_path, {"categories": [category]}))
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(tmp_path / "vocab.yaml"))


def test_duplicate_category_names_are_rejected(tmp_path: Path) -> None:
    data = {"categories": [{"name": "a", "labels": ["x"]}, {"name": "a", "labels": ["y"]}]}
    with pytest.raises(ConfigError, match="repeated: a"):
        load_vocabulary(_write(tmp_path, data))


def test_every_nonempty_line_is_a_label_hash_labels_included_and_drops_are_counted(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("#pixelart\n# pixelart\n  cat  \n\n#1 digital painting of all time\ncat\n")
    _, categories = load_vocabulary(_write(tmp_path, {"categories": [{"name": "s", "labels_file": "labels.txt"}]}))
    assert categories[0].labels == ("#pixelart", "# pixelart", "cat", "#1 digital painting of all time")
    stats = categories[0].stats
    assert (stats.read, stats.empty_lines, stats.comment_lines, stats.exact_duplicates) == (5, 1, 0, 1)


def test_comments_are_skipped_only_when_the_category_asks(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("# a comment\ncat\n\ndog\ncat\n")
    category = {"name": "s", "labels_file": "labels.txt", "comments": True}
    _, categories = load_vocabulary(_write(tmp_path, {"categories": [category]}))
    assert categories[0].labels == ("cat", "dog") and categories[0].stats.comment_lines == 1


def test_spelling_variants_merge_long_labels_are_named_and_top_picks_stay_distinct(
    tiny_pipeline, built_artifacts: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long_label = " ".join(f"word{i}" for i in range(100))
    variants = ["#pixelart", "8k", "8 k", "high-key", "high - key", "d&d", "d & d", "H.R. Giger", "H. R. Giger"]
    (tmp_path / "flavors.txt").write_text("\n".join([*variants, long_label, long_label + " extra", "calm"]) + "\n")
    vocab = _write(tmp_path, {"categories": [{"name": "flavor", "mode": "top", "k": 12, "labels_file": "flavors.txt"}]})
    config = tiny_pipeline(**{"embed-vocab": {"vocabulary": str(vocab)}})
    with caplog.at_level("WARNING"):
        outcome = {o.stage: o for o in run(config, GRAPH, RunRequest(targets=("embed-vocab",)))}["embed-vocab"]
    assert outcome.outcome is Outcome.RAN and "5 merged, 2 truncated" in outcome.summary, outcome.summary
    entry = VocabIndex.read(config.artifacts / "embed-vocab").categories[0]
    assert entry.labels == ("#pixelart", "8k", "high-key", "d&d", "H.R. Giger", long_label, "calm")
    stats = entry.stats
    assert stats.token_merges == 5 and MergedLabel("8 k", "8k") in stats.merged
    assert stats.truncated == 2 and stats.truncated_labels[0] == long_label
    assert "flavor: 5 merged into a spelling with the same tokens ('8 k' -> '8k'" in caplog.text
    assert "2 cut to the context length" in caplog.text
    report = LabelReport.from_json(json.loads((config.artifacts / "reports/embed-vocab.json").read_text()))
    assert report.categories["flavor"] == stats and stats.read == 12

    from runtime.clip import ClipRuntime
    from runtime.interrogator import Interrogator
    from runtime.label_tables import LabelTables
    from runtime.preprocess import open_image

    tables = LabelTables.load(config.artifacts / "embed-vocab")
    interrogator = Interrogator(ClipRuntime.load(built_artifacts.parent / "device/models"), tables)
    result = interrogator.interrogate(open_image(REPO / "data/images/cat.jpg"))
    picked = result.categories[0].picks
    rows = {np.asarray(tables.categories[0].rows[p.row]).tobytes() for p in picked}
    assert len(picked) == 7 and len(rows) == 7  # every label once, no two with one embedding
    assert InterrogationAnswer.of(result).categories[0].labels == 7


def test_top_and_many_picks_skip_a_label_whose_embedding_was_already_picked() -> None:
    from runtime.interrogator import Pick, _distinct
    from runtime.label_tables import CategoryMode, CategoryTable

    rows = np.array([[1, 0], [1, 0], [0, 1]], np.float16)
    table = CategoryTable(name="c", mode=CategoryMode.TOP, file="c.npy", labels=("8k", "8 k", "calm"), rows=rows)
    ranked = [Pick("8k", 0.9, 0), Pick("8 k", 0.9, 1), Pick("calm", 0.1, 2)]
    assert [p.label for p in _distinct(ranked, table)] == ["8k", "calm"]


def test_changed_category_reencodes_only_new_prompts(tiny_pipeline, tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    vocab = _write(
        tmp_path,
        {
            "name": "small",
            "categories": [
                {"name": "animal", "labels_file": "labels.txt", "template": "a sketch of one {}"},
                {"name": "mood", "mode": "top", "k": 2, "template": "mood: {}", "labels": ["happy", "sad", "calm"]},
            ],
        },
    )
    config = tiny_pipeline(**{"embed-vocab": {"vocabulary": str(vocab)}})
    first = {o.stage: o for o in run(config, GRAPH, RunRequest(targets=("embed-vocab",)))}["embed-vocab"]
    assert first.outcome is Outcome.RAN and "6 labels in 2 categories (6 encoded, 0 reused)" in first.summary
    table = np.load(config.artifacts / "embed-vocab/animal.npy")
    assert table.dtype == np.float16 and table.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(table.astype(np.float32), axis=1), 1.0, atol=2e-3)

    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\nhorse\n")
    second = {o.stage: o for o in run(config, GRAPH, RunRequest(targets=("embed-vocab",)))}["embed-vocab"]
    assert "7 labels in 2 categories (1 encoded, 6 reused)" in second.summary
    index = json.loads((config.artifacts / "embed-vocab/vocab.json").read_text())
    assert index["categories"][0]["labels"] == ["cat", "dog", "bird", "horse"]
    assert len(index["text_model_sha256"]) == 64
    np.testing.assert_array_equal(np.load(config.artifacts / "embed-vocab/animal.npy")[:3], table)


def test_batched_cut_embeddings_equal_the_fixed_shape_model_for_every_label(built_artifacts: Path) -> None:
    """embed-vocab batches by length and cuts after the last EOS; each row must still be what the
    fixed [1, 77] text model (the one compiled for the NPU) gives for that prompt."""
    from runtime.backends import OnnxRuntimeBackend
    from runtime.model_io import ExportInfo
    from runtime.tokenizer import TextTokenizer

    export, tables = built_artifacts / "export", built_artifacts / "embed-vocab"
    batched = onnx.load(str(export / "text_encoder_batched.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in batched] == ["batch", "length"]
    fixed = OnnxRuntimeBackend(export / "text_encoder.onnx")
    tokenizer = TextTokenizer.of_export(export, ExportInfo.read(export))
    index = json.loads((tables / "vocab.json").read_text())
    for entry in index["categories"]:
        rows = np.load(tables / entry["file"]).astype(np.float32)
        for i in range(0, len(entry["labels"]), 25):  # a sample across every category and length
            prompt = entry["template"].replace("{}", entry["labels"][i])
            reference = fixed.run({"input_ids": tokenizer.encode(prompt)})["text_embeds"][0]
            reference /= np.linalg.norm(reference)
            np.testing.assert_allclose(rows[i], reference, atol=2e-3)  # float16 rows


def test_control_characters_and_escape_sequences_are_removed_and_counted(tmp_path: Path) -> None:
    lines = ["red\x1b[31m cat\x1b[0m", "dog\u202e", "nul\x00l", "line\u2028separator", "next\x85line", "plain"]
    (tmp_path / "labels.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _, categories = load_vocabulary(_write(tmp_path, {"categories": [{"name": "s", "labels_file": "labels.txt"}]}))
    assert categories[0].labels == ("red cat", "dog", "null", "line separator", "nextline", "plain")
    assert categories[0].stats.cleaned == 5
    assert "5 had control characters or escape sequences removed" in categories[0].stats.problems()


def test_a_label_past_a_thousand_characters_is_refused_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("cat\n" + "x" * 1001 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"labels\.txt: line 2: a label of 1,001 characters"):
        load_vocabulary(_write(tmp_path, {"categories": [{"name": "s", "labels_file": "labels.txt"}]}))


def test_a_labels_file_that_is_not_utf8_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_bytes(b"cat\ncaf\xe9\n")
    with pytest.raises(ConfigError, match=r"labels\.txt: not UTF-8 text \(byte 7\)"):
        load_vocabulary(_write(tmp_path, {"categories": [{"name": "s", "labels_file": "labels.txt"}]}))


def test_an_alias_bomb_in_a_vocabulary_is_refused_at_once(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\ncategories: [{name: s, labels: *a9}]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="aliases"):
        load_vocabulary(path)


def test_a_folder_of_label_lists_is_a_vocabulary_as_a1111_reads_its_interrogate_folder(tmp_path: Path) -> None:
    """`<name>.txt` takes the best label, `<name>.top<N>.txt` the N best; names sort the categories."""
    from labels.vocabulary import load_vocabulary, vocabulary_files
    from runtime.label_tables import CategoryMode

    folder = tmp_path / "interrogate"
    folder.mkdir()
    (folder / "mediums.txt").write_text("a photograph\nan oil painting\n")
    (folder / "flavors.top3.txt").write_text("highly detailed\nsharp focus\n\nsharp focus\n")
    (folder / "notes.md").write_text("not a list")
    spec, categories = load_vocabulary(folder)
    assert [(c.spec.name, c.spec.mode, c.spec.k) for c in categories] == [
        ("flavors", CategoryMode.TOP, 3),
        ("mediums", CategoryMode.ONE, 1),
    ]
    assert categories[0].labels == ("highly detailed", "sharp focus") and spec.name == "interrogate"
    assert vocabulary_files(folder) == [folder / "flavors.top3.txt", folder / "mediums.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"no \.txt label lists in this folder"):
        load_vocabulary(empty)


@pytest.mark.parametrize("names", [("a b.txt", "a_b.txt"), ("日本.txt", "中文.txt"), ("x.top3.txt", "x.txt")])
def test_two_label_files_of_one_category_name_are_one_error_naming_both(tmp_path: Path, names: tuple[str, str]) -> None:
    """Both once made a 55-line pydantic traceback (the category names were repeated)."""
    from labels.vocabulary import load_vocabulary

    for name in names:
        (tmp_path / name).write_text("a label\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_vocabulary(tmp_path)
    message = str(raised.value)
    assert all(name in message for name in names) and "rename one of them" in message
    assert "\n" not in message and "Traceback" not in message
