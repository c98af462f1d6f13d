"""The `pulsar2 build` JSON config for one encoder, generated from pipeline.yaml.

Keys and values are spelled as in Axera's pulsar2 docs (user_guides_config/config.md). Inputs keep the
float model's types: pixel_values stays FP32 NCHW (runtime/ normalizes, exactly as at calibration); a WD
tagger's image arrives as U8 NHWC, its BGR 0-255 pixels as Pillow gives them (the NPU converts them to the
graph's float input; the graph's own scale and transpose are compiled onto the NPU);
token ids arrive as S32, as in Axera's CLIP text-encoder example, since the NPU has no int64.
"""

from __future__ import annotations

from typing import Any

from toolchains.compile_params import CompileParams
from toolchains.encoder_specs import EncoderSpec

REMOTE_MODELS = "models"
REMOTE_CALIBRATION = "calibration"
REMOTE_CONFIGS = "configs"
REMOTE_BUILD = "build"


def remote_paths(spec: EncoderSpec) -> dict[str, str]:
    """Paths relative to the build host's workdir, which the container sees as /data."""
    return {
        "onnx": f"{REMOTE_MODELS}/{spec.name}.onnx",
        "calibration": f"{REMOTE_CALIBRATION}/{spec.calibration.name}",
        "config": f"{REMOTE_CONFIGS}/{spec.name}.json",
        "output_dir": f"{REMOTE_BUILD}/{spec.name}",
        "output_name": f"{spec.name}.axmodel",
    }


def pulsar2_config(spec: EncoderSpec, params: CompileParams) -> dict[str, Any]:
    pulsar2 = params.pulsar2
    channels = 1 if spec.is_token_input else 3
    quant: dict[str, Any] = {
        "input_configs": [
            {
                "tensor_name": spec.input_name,
                "calibration_dataset": remote_paths(spec)["calibration"],
                "calibration_format": "Numpy",
                "calibration_size": params.calibration_size,
                "calibration_mean": [0.0] * channels,
                "calibration_std": [1.0] * channels,
            }
        ],
        "calibration_method": params.calibration_method,
        "precision_analysis": pulsar2.precision_analysis,
        "precision_analysis_method": pulsar2.precision_analysis_method,
        "precision_analysis_mode": pulsar2.precision_analysis_mode,
        "conv_bias_data_type": pulsar2.conv_bias_data_type,
        "transformer_opt_level": pulsar2.transformer_opt_level,
        "enable_smooth_quant": pulsar2.enable_smooth_quant,
    }
    if params.data_type == "U16":
        # Axera's documented way to quantize the whole graph at U16 (precision_debug_guides, Q&A).
        everything = {"start_tensor_names": ["DEFAULT"], "end_tensor_names": ["DEFAULT"], "data_type": "U16"}
        quant["layer_configs"] = [everything]
    if spec.is_token_input:
        processor = {"tensor_name": spec.input_name, "src_dtype": "S32", "src_layout": "NCHW"}
    else:
        processor = {
            "tensor_name": spec.input_name,
            "tensor_layout": spec.layout,
            "src_layout": spec.layout,
            "src_dtype": spec.source_dtype,
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
        }
    return {
        "model_type": "ONNX",
        "target_hardware": pulsar2.target_hardware,
        "npu_mode": pulsar2.npu_mode,
        "quant": quant,
        "input_processors": [processor],
        "output_processors": [{"tensor_name": spec.output_name, "output_dtype": "FP32"}],
        "compiler": {"check": pulsar2.compiler_check, "npu_perf": pulsar2.npu_perf},
    }


def pulsar2_build_args(spec: EncoderSpec, params: CompileParams) -> list[str]:
    """`pulsar2 build` arguments, as in Axera's quick start (paths relative to /data)."""
    paths = remote_paths(spec)
    return [
        "pulsar2",
        "build",
        "--target_hardware",
        params.pulsar2.target_hardware,
        "--input",
        paths["onnx"],
        "--output_dir",
        paths["output_dir"],
        "--output_name",
        paths["output_name"],
        "--config",
        paths["config"],
    ]
