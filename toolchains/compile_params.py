"""`stages.compile:` in pipeline.yaml: what both toolchains read (precision, calibration) and Pulsar2's own keys."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.config import ConfigPath, Strict


class Pulsar2Params(Strict):
    """Keys of the `pulsar2 build` JSON config, spelled as Axera's pulsar2 docs spell them."""

    image: str = "pulsar2:5.1"  # the docker image loaded on the build host (`docker load -i ...`)
    target_hardware: Literal["AX650", "AX620E", "AX615", "M76H", "M57"] = "AX650"
    # NPU3: all three AX650 cores, as Axera's CLIP builds and the hand-run plan use; NPU1 leaves two cores to
    # a Stable Diffusion model on the same NPU and loads when it runs in vNPU mode (README: npu_mode).
    npu_mode: Literal["NPU1", "NPU2", "NPU3"] = "NPU3"
    precision_analysis: bool = True
    # EndToEnd simulates the whole quantized model: its last row is the model's output, the figure that
    # Axera's precision guide holds to > 0.98. PerLayer's last row measures the output layer alone.
    precision_analysis_method: Literal["PerLayer", "EndToEnd"] = "EndToEnd"
    precision_analysis_mode: Literal["Reference", "NPUBackend"] = "Reference"
    conv_bias_data_type: Literal["S32", "FP32"] = "S32"
    transformer_opt_level: int = Field(0, ge=0, le=2)
    enable_smooth_quant: bool = False
    compiler_check: int = Field(0, ge=0, le=3)
    npu_perf: bool = False
    platform: str | None = None  # e.g. linux/amd64; set automatically on an arm64 build host
    # How the build runs, not what it makes (left out of the digest):
    # Axera's ax_pulsar2_<ver>.tar.gz on this machine, loaded into the build host's engine when `image` is missing.
    image_archive: ConfigPath | None = Field(None, exclude=True)
    # The engine's memory below which the build is refused before anything is uploaded: Axera publishes no
    # figure; a U16 ViT-B/32 calibrates in float32 over its activations (see README: the build host).
    min_memory_gb: float = Field(8.0, ge=0, le=4096, exclude=True)
    memory_limit_gb: float | None = Field(None, gt=0, le=4096, exclude=True)  # a cap on the build container

    @model_validator(mode="after")
    def _npu_mode_fits(self) -> Pulsar2Params:
        if self.target_hardware != "AX650" and self.npu_mode == "NPU3":
            raise ValueError(f"npu_mode NPU3 exists only on AX650, not {self.target_hardware}")
        return self


class CompileParams(Strict):
    target: Literal["pulsar2", "onnxruntime"] = "pulsar2"
    host: str = "local"  # the build host (pulsar2 target); `invoke compile --host NAME` overrides
    data_type: Literal["U16", "U8"] = "U16"  # activation precision
    # QuantMethod in the proto of pulsar2-docs' config.md (its help text also names KL; the proto does not).
    calibration_method: Literal["MinMax", "Percentile", "MSE"] = "MinMax"
    calibration_size: int = Field(32, ge=1, le=10000)
    min_cosine: float = Field(0.98, ge=0, le=1)  # quantized vs float (Axera's documented bar is 0.98)
    pulsar2: Pulsar2Params = Pulsar2Params()
