"""export and verify on the tiny CLIP, through the real loading, export and onnxruntime code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from modeling.graph_checks import check_operators
from modeling.model_config import ModelConfig
from modeling.op_tables import AX650
from pipeline.errors import ModelLoadError
from pipeline.graph import StageGraph
from pipeline.runner import Outcome, RunRequest, plan, run
from runtime import model_io
from runtime.golden import GoldenSet
from stages import ALL_STAGES
from stages.verify import VerificationReport
from tests.helpers import device_set

GRAPH = StageGraph(ALL_STAGES)


def _io(path: Path) -> dict[str, tuple[int, list]]:
    model = onnx.load(str(path))
    values = [*model.graph.input, *model.graph.output]
    return {
        v.name: (v.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim])
        for v in values
    }


def test_exported_files_have_opset_14_static_shapes_and_the_contract_names(built_artifacts: Path) -> None:
    export = built_artifacts / "export"
    for name in ("image_encoder.onnx", "text_encoder.onnx"):
        model = onnx.load(str(export / name))
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [14]
    assert _io(export / model_io.IMAGE_MODEL_FILE) == {
        "pixel_values": (onnx.TensorProto.FLOAT, [1, 3, 224, 224]),
        "image_embeds": (onnx.TensorProto.FLOAT, [1, 64]),
    }
    assert _io(export / model_io.TEXT_MODEL_FILE) == {
        "input_ids": (onnx.TensorProto.INT64, [1, 77]),
        "text_embeds": (onnx.TensorProto.FLOAT, [1, 64]),
    }
    for name in ("tokenizer.json", "preprocessor_config.json", "export.json"):
        assert (export / name).is_file()


def test_verify_report_shows_near_identical_outputs(built_artifacts: Path) -> None:
    report = VerificationReport.read(built_artifacts / "verify")
    assert report.passed and all(check.passed for check in report.checks)
    for output in ("image_embeds", "text_embeds"):
        assert report.numerics[output].min_cosine >= 0.99999
    names = [check.name for check in report.checks]
    assert "text_encoder.onnx: op ArgMax x1" in names
    assert "tokenizer vs transformers" in names and "preprocessing vs transformers" in names


def test_golden_files_reproduce_through_onnxruntime(built_artifacts: Path) -> None:
    golden, export = built_artifacts / "verify/golden", built_artifacts / "export"
    references = GoldenSet.read(golden)
    assert references.references["image_embeds"].labels == ("astronaut.jpg", "autumn_painting.jpg")
    ids, text_embeds = references.pair(golden, "text_embeds")
    assert ids.dtype == np.int64 and ids.shape[1] == 77
    session = ort.InferenceSession(str(export / model_io.TEXT_MODEL_FILE), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids[:1]})[0]
    np.testing.assert_allclose(got, text_embeds[:1], atol=1e-4)


def test_rerun_reports_every_stage_up_to_date(tiny_pipeline) -> None:
    config = tiny_pipeline()
    outcomes = {o.stage: o.outcome for o in run(config, GRAPH, RunRequest(targets=("compile",)))}
    assert set(outcomes.values()) == {Outcome.UP_TO_DATE} and len(outcomes) == 4
    # This copy's device folder is elsewhere: fetch says so, and runs.
    reasons = dict((s.name, d.reasons) for s, d in plan(config, GRAPH, RunRequest()))
    assert len(reasons["fetch"]) == 1 and reasons["fetch"][0].startswith("param devices[local].workdir: ")


def test_verify_param_change_reruns_verify_only(tiny_pipeline) -> None:
    config = tiny_pipeline(verify={"max_images": 3})
    reasons = {stage.name: d.reasons for stage, d in plan(config, GRAPH, RunRequest())}
    assert reasons["export"] == () and reasons["verify"] == ("param max_images: 2 -> 3",)
    assert reasons["calibrate"] == () and reasons["compile"] == ("upstream verify will run first",)
    outcomes = {o.stage: o.outcome for o in run(config, GRAPH, RunRequest(targets=("verify",)))}
    assert outcomes == {"export": Outcome.UP_TO_DATE, "verify": Outcome.RAN}
    assert len(GoldenSet.read(config.artifacts / "verify/golden").references["image_embeds"].labels) == 3


def test_failed_verification_lists_failures_and_keeps_the_last_good_report(tiny_pipeline) -> None:
    config = tiny_pipeline(verify={"max_abs_diff": 1e-12})
    before = (config.artifacts / "verify/verification.json").read_bytes()
    outcomes = {o.stage: o for o in run(config, GRAPH, RunRequest())}
    assert outcomes["compile"].outcome is Outcome.SKIPPED and outcomes["fetch"].outcome is Outcome.SKIPPED
    failed = outcomes["verify"]
    assert failed.outcome is Outcome.FAILED
    assert "max abs diff" in failed.summary and "full report:" in failed.summary
    assert (config.artifacts / "verify/verification.json").read_bytes() == before
    attempt = VerificationReport.from_json(json.loads((config.artifacts / "reports/verify.json").read_text()))
    assert not attempt.passed and any(not check.passed and "max abs diff" in check.name for check in attempt.checks)


def test_verify_without_images_says_where_to_put_them(tiny_pipeline, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    config = tiny_pipeline(verify={"images": str(empty)})
    outcome = run(config, GRAPH, RunRequest(targets=("verify",)))[1]
    assert outcome.outcome is Outcome.FAILED and "no images" in outcome.summary


def test_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    from modeling.loading import load_model

    with pytest.raises(ModelLoadError, match=r"model directory .* does not exist"):
        load_model(ModelConfig(id=str(tmp_path / "nope")), tmp_path)


def test_input_sizes_other_than_the_model_s_are_refused_before_exporting(tmp_path: Path) -> None:
    from modeling import families
    from modeling.loading import load_model

    loaded = load_model(ModelConfig(id="builtin:tiny-clip"), tmp_path)
    model, tokenizer, family = loaded.model, loaded.tokenizer, loaded.family
    preprocess = families.preprocess_config(loaded.image_processor)
    trained = model.config.vision_config.image_size
    with pytest.raises(ModelLoadError, match=f"set model.image_size: {trained}"):
        families.image_size(model, preprocess, trained + 32)
    longest = model.config.text_config.max_position_embeddings
    with pytest.raises(ModelLoadError, match=f"set model.context_length: {longest}"):
        families.context_length(family, model, tokenizer, longest + 1)
    assert families.image_size(model, preprocess, None) == families.image_size(model, preprocess, trained) == trained
    assert families.context_length(family, model, tokenizer, None) == longest
    assert families.context_length(family, model, tokenizer, 16) == 16


@pytest.mark.parametrize("model_type", ["bert", "siglip2", None])
def test_a_model_of_an_unsupported_family_is_one_error_naming_the_supported_ones(
    model_type: str | None, tmp_path: Path
) -> None:
    from modeling.loading import load_model

    (tmp_path / "other").mkdir()
    (tmp_path / "other/config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(ModelLoadError) as raised:
        load_model(ModelConfig(id=str(tmp_path / "other")), tmp_path)
    message = str(raised.value)
    assert (
        f"is a {model_type!r} model; supported model families (config.json model_type): clip, siglip, chinese_clip"
        in message
    )
    if model_type == "siglip2":
        assert "fixed-resolution SigLIP2 checkpoint (model_type siglip)" in message


FULL_SIZE = {  # transformers' default configs are the base models' shapes (SigLIP base/16, CN-CLIP BERT-base)
    "clip": ({"eos_token_id": 2}, {"patch_size": 32}, 49407, 77),
    "siglip": ({}, {}, 1, 64),
    "chinese_clip": ({}, {"patch_size": 16}, 0, 52),
}


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f != "clip" else f for f in FULL_SIZE])
def test_full_size_models_export_with_only_ax650_operators(family: str, tmp_path: Path) -> None:
    """Base-size shapes of each family (random weights): the real models' graphs must fit the NPU's
    operator table, with the pooling and masking each family's facts ask for."""
    import torch
    import transformers

    from modeling.encoders import ImageEncoder, TextEncoder
    from modeling.families import FAMILIES
    from modeling.onnx_export import export_onnx
    from runtime.model_io import TextFacts

    text_config, vision_config, pad_id, length = FULL_SIZE[family]
    names = {"clip": "CLIP", "siglip": "Siglip", "chinese_clip": "ChineseCLIP"}[family]
    config = getattr(transformers, f"{names}Config")(text_config=text_config, vision_config=vision_config)
    config._attn_implementation = "eager"
    model = getattr(transformers, f"{names}Model")(config).eval()
    known = FAMILIES[family]
    facts = TextFacts(pad_id, "right", pad_id if family == "clip" else None, known.pooling, known.causal, known.masked)
    ids = torch.full((1, length), pad_id)
    ids[0, :4] = torch.tensor([101, 102, 103, 104])
    cases = {
        "image": (ImageEncoder(model), torch.zeros(1, 3, 224, 224), "pixel_values", "image_embeds"),
        "text": (TextEncoder(model, facts), ids, "input_ids", "text_embeds"),
    }
    for name, (module, example, input_name, output_name) in cases.items():
        path = tmp_path / f"{name}.onnx"
        export_onnx(module, example, path, input_name=input_name, output_name=output_name, opset=14, simplify=True)
        exported = onnx.load(str(path))
        failures = [c for c in check_operators(path.name, exported, AX650) if not c.passed]
        assert failures == [], failures
        assert exported.graph.output[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_export_json_is_read_and_written_through_one_contract(built_artifacts: Path, tmp_path: Path) -> None:
    from common.errors import ModelFilesError
    from runtime.model_io import ExportInfo

    info = ExportInfo.read(built_artifacts / "export")
    assert info.image.input.shape == (1, 3, info.image_size, info.image_size)
    info.write(tmp_path)
    assert ExportInfo.read(tmp_path) == info
    (tmp_path / "export.json").write_text('{"model": "from an older export"}')
    with pytest.raises(ModelFilesError, match=r"unreadable or from another version .* run `invoke export`"):
        ExportInfo.read(tmp_path)
    with pytest.raises(ModelFilesError, match=r"No such file or directory: run `invoke export` \(on a device"):
        ExportInfo.read(tmp_path / "missing")


def test_compile_report_is_one_contract_read_by_fetch_and_the_device(built_artifacts: Path, tmp_path: Path) -> None:
    from common.errors import ModelFilesError
    from runtime.manifest import Manifest
    from runtime.model_io import CompileReport

    report = CompileReport.read(built_artifacts / "compile")
    assert report.file("image_encoder").endswith(".onnx") and report.target == "onnxruntime"
    text = report.models["text_encoder"]  # typed per encoder: what the toolchain made and how close it is
    assert 0.99 <= text.cosine <= 1.0 and "golden inputs" in text.cosine_source and text.calibration_samples
    assert Manifest.read(device_set(built_artifacts.parent / "device/models")).compile == report  # fetch copied it
    with pytest.raises(ModelFilesError, match="names no compiled model for vision: run `invoke compile`"):
        report.file("vision")
    (tmp_path / CompileReport.FILE).write_text('{"target": "pulsar2"}')
    with pytest.raises(ModelFilesError, match="unreadable or from another version"):
        CompileReport.read(tmp_path)
