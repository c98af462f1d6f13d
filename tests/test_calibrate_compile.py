"""calibrate and the local compile target: real archives, real prompts, quantized-vs-float cosine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.graph import StageGraph
from pipeline.runner import Outcome, RunRequest, run
from runtime.model_io import ExportInfo
from runtime.preprocess import open_image, preprocess
from runtime.tokenizer import TextTokenizer
from stages import ALL_STAGES
from tests.helpers import device_set
from toolchains.calibration_tar import CalibrationSet, read_npy_tar
from toolchains.compile_params import CompileParams
from toolchains.encoder_specs import encoder_specs
from toolchains.pulsar2_config import pulsar2_build_args, pulsar2_config

GRAPH = StageGraph(ALL_STAGES)


def _normalize(text: str) -> str:
    return " ".join(text.lower().replace(" ,", ",").split())


def test_text_calibration_decodes_back_to_the_real_prompts(built_artifacts: Path) -> None:
    archive = CalibrationSet.read(built_artifacts / "calibrate").archive("input_ids")
    samples = read_npy_tar(built_artifacts / "calibrate" / archive.file)
    assert len(samples) == 8 and all(s.shape == (1, 77) and s.dtype == np.int64 for s in samples)
    export = built_artifacts / "export"
    tokenizer = TextTokenizer.of_export(export, ExportInfo.read(export))
    decoded = [_normalize(tokenizer.decode(s)) for s in samples]
    assert decoded == [_normalize(p) for p in archive.sources]
    prompts = (Path(__file__).parents[1] / "data/calibration_prompts.txt").read_text().splitlines()
    assert set(archive.sources) <= set(prompts)


def test_image_calibration_is_the_runtime_preprocessing_of_real_photos(built_artifacts: Path) -> None:
    archive = CalibrationSet.read(built_artifacts / "calibrate").archive("pixel_values")
    samples = read_npy_tar(built_artifacts / "calibrate" / archive.file)
    sources = archive.sources
    assert len(samples) == len(sources) == 4
    config = ExportInfo.read(built_artifacts / "export").facts.preprocess
    for sample, source in zip(samples, sources, strict=True):
        assert sample.shape == (1, 3, 224, 224) and sample.dtype == np.float32
        np.testing.assert_array_equal(sample, preprocess(open_image(Path(source)), config))


def test_rebuilt_calibration_is_byte_identical_so_compile_stays_up_to_date(tiny_pipeline) -> None:
    config = tiny_pipeline()
    before = (config.artifacts / "calibrate/input_ids.tar").read_bytes()
    outcomes = run(config, GRAPH, RunRequest(targets=("calibrate",), force=True, only=True))
    assert outcomes[0].outcome is Outcome.RAN
    assert (config.artifacts / "calibrate/input_ids.tar").read_bytes() == before
    after = {o.stage: o.outcome for o in run(config, GRAPH, RunRequest(targets=("compile",)))}
    assert after["compile"] is Outcome.UP_TO_DATE


def test_onnxruntime_target_reports_cosine_per_encoder(built_artifacts: Path) -> None:
    report = json.loads((built_artifacts / "compile/compiled.json").read_text())
    assert report["target"] == "onnxruntime" and report["data_type"] == "U16"
    for name in ("image_encoder", "text_encoder"):
        model = report["models"][name]
        assert (built_artifacts / "compile" / model["file"]).is_file()
        assert 0.99 <= model["cosine"] <= 1.0


def test_u8_quantization_is_reported_and_checked_against_the_bar(tiny_pipeline) -> None:
    config = tiny_pipeline(compile={"data_type": "U8", "min_cosine": 0.999999})
    outcome = {o.stage: o for o in run(config, GRAPH, RunRequest(targets=("compile",)))}["compile"]
    assert outcome.outcome is Outcome.FAILED
    assert "cosine" in outcome.summary and "< 0.999999" in outcome.summary
    # The last good (U16) models are still in place.
    assert json.loads((config.artifacts / "compile/compiled.json").read_text())["data_type"] == "U16"


def test_fetch_puts_models_tokenizer_and_golden_data_on_the_device(built_artifacts: Path) -> None:
    device = device_set(built_artifacts.parent / "device" / "models")
    manifest = json.loads((device / "manifest.json").read_text())
    for name in ("image_encoder.onnx", "text_encoder.onnx", "tokenizer.json", "preprocessor_config.json"):
        assert (device / name).is_file() and name in manifest["files"]
    assert (device / "golden/pixel_values.npy").is_file()
    assert not list(device.parent.rglob("*.tmp-*"))
    assert device.is_symlink() and device.resolve().parent.name == "sets"


def test_pulsar2_config_uses_axera_keys_and_s32_token_ids(built_artifacts: Path) -> None:
    specs = {s.name: s for s in encoder_specs(built_artifacts / "export", built_artifacts / "calibrate")}
    params = CompileParams()
    text = pulsar2_config(specs["text_encoder"], params)
    assert text["model_type"] == "ONNX" and text["target_hardware"] == "AX650" and text["npu_mode"] == "NPU3"
    assert text["input_processors"] == [{"tensor_name": "input_ids", "src_dtype": "S32", "src_layout": "NCHW"}]
    quant = text["quant"]
    assert quant["input_configs"][0] == {
        "tensor_name": "input_ids",
        "calibration_dataset": "calibration/input_ids.tar",
        "calibration_format": "Numpy",
        "calibration_size": 32,
        "calibration_mean": [0.0],
        "calibration_std": [1.0],
    }
    everything = {"start_tensor_names": ["DEFAULT"], "end_tensor_names": ["DEFAULT"], "data_type": "U16"}
    assert quant["layer_configs"] == [everything]
    assert {"calibration_method", "precision_analysis", "precision_analysis_method", "conv_bias_data_type"} <= set(
        quant
    )
    assert quant["precision_analysis_method"] == "EndToEnd" and quant["calibration_method"] == "MinMax"
    assert text["compiler"] == {"check": 0, "npu_perf": False}
    image = pulsar2_config(specs["image_encoder"], CompileParams(data_type="U8"))
    assert "layer_configs" not in image["quant"]
    assert image["input_processors"][0]["src_dtype"] == "FP32"
    assert pulsar2_build_args(specs["image_encoder"], params) == [
        "pulsar2",
        "build",
        "--target_hardware",
        "AX650",
        "--input",
        "models/image_encoder.onnx",
        "--output_dir",
        "build/image_encoder",
        "--output_name",
        "image_encoder.axmodel",
        "--config",
        "configs/image_encoder.json",
    ]


def test_captions_written_beside_the_sample_photos_leave_every_stage_up_to_date(tiny_pipeline, tmp_path: Path) -> None:
    from pipeline.runner import plan

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat.jpg", "coffee.jpg", "rocket.jpg"):
        (photos / name).write_bytes((Path(__file__).parents[1] / "data/images" / name).read_bytes())
    config = tiny_pipeline(verify={"images": str(photos)}, calibrate={"images": str(photos)})
    run(config, GRAPH, RunRequest(targets=("compile",)))
    # what `invoke caption --images photos` leaves there
    (photos / "cat.txt").write_text("a cat")
    (photos / "captions.jsonl").write_text("{}\n")
    reasons = {stage.name: decision.reasons for stage, decision in plan(config, GRAPH, RunRequest())}
    assert reasons["verify"] == () and reasons["calibrate"] == () and reasons["compile"] == ()
    (photos / "bricks.jpg").write_bytes((Path(__file__).parents[1] / "data/images/bricks.jpg").read_bytes())
    reasons = {stage.name: decision.reasons for stage, decision in plan(config, GRAPH, RunRequest())}
    assert reasons["verify"] and reasons["calibrate"]  # a new photo is a new input


def test_fewer_distinct_photos_than_image_count_is_warned(tiny_pipeline, tmp_path: Path, caplog) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    images = Path(__file__).parents[1] / "data/images"
    for name, source in (("cat.jpg", "cat.jpg"), ("same_cat.jpg", "cat.jpg"), ("coffee.jpg", "coffee.jpg")):
        (photos / name).write_bytes((images / source).read_bytes())
    config = tiny_pipeline(calibrate={"images": str(photos), "image_count": 32})
    with caplog.at_level("WARNING"):
        outcome = run(config, GRAPH, RunRequest(targets=("calibrate",), only=True))[0]
    assert outcome.outcome is Outcome.RAN and "2 images (only 2 distinct found)" in outcome.summary
    assert "only 2 distinct images" in caplog.text and "image_count 32" in caplog.text
