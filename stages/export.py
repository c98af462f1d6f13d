"""export: the image and text encoders, each with its projection, to static-shape ONNX.

Outputs (artifacts/export/): image_encoder.onnx, text_encoder.onnx, the tokenizer and preprocessing
config the device needs, and export.json describing the tensor contract; plus text_encoder_batched.onnx
(dynamic batch and length) that embed-vocab runs on the controller.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from modeling.model_config import ModelConfig
from pipeline.config import Strict
from pipeline.files import list_files
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.terminal import progress_steps
from runtime import model_io

if TYPE_CHECKING:
    from stages.config import PipelineConfig

# Pulsar2 prefers opset 14 (Axera's CLIP examples use it; optimum's CLIPOnnxConfig defaults to it too).
DEFAULT_OPSET = 14


class ExportParams(Strict):
    opset: int = Field(DEFAULT_OPSET, ge=11, le=21)
    simplify: bool = True


class ExportStageParams(ExportParams):
    """export's settings and the model it exports."""

    model: ModelConfig


class ExportStage(Stage):
    name = "export"
    help = "Export the CLIP image and text encoders (with projections) to ONNX."
    tools = ("torch", "transformers", "onnx", "onnxslim")
    settings = ExportParams
    outputs = (
        model_io.IMAGE_MODEL_FILE,
        model_io.TEXT_MODEL_FILE,
        model_io.TEXT_BATCH_MODEL_FILE,
        model_io.TOKENIZER_FILE,
        model_io.PREPROCESSOR_FILE,
        model_io.ExportInfo.FILE,
    )

    def params(self, config: PipelineConfig) -> ExportStageParams:
        return ExportStageParams(model=config.model, **dict(config.stages.export))

    def external_inputs(self, params: ExportStageParams) -> list[Path]:
        if not params.model.is_local_dir:
            return []
        directory = Path(params.model.id)
        # Every file loading may read (configs, weights, tokenizer and preprocessor files, spiece.model, vocab.txt),
        # not hidden ones (.git, .cache): what is in the folder is what the model is.
        files = list_files(directory)
        return [p for p in files if not any(part.startswith(".") for part in p.relative_to(directory).parts)]

    def run(self, ctx: StageContext[ExportStageParams]) -> StageResult:
        from modeling.loading import check_input_sizes, load_clip

        params = ctx.params
        model_cfg = params.model
        with progress_steps(self.name) as step:
            step(f"loading {model_cfg.id}")
            loaded = load_clip(model_cfg, ctx.cache_dir)
            check_input_sizes(model_cfg, loaded)
            step("exporting the image and text encoders")
            counts = self._export(ctx, loaded)
        info = _export_info(params, loaded, counts)
        info.write(ctx.out_dir)
        dim, size, length = info.projection_dim, model_cfg.image_size, model_cfg.context_length
        return StageResult(
            summary=f"image [1,3,{size},{size}] -> [1,{dim}], text [1,{length}] -> [1,{dim}], opset {params.opset}",
            figures={"nodes": counts, "projection_dim": dim},
        )

    def _export(self, ctx: StageContext[ExportStageParams], loaded: Any) -> dict[str, dict[str, int]]:
        """Both encoders (and the batched text encoder embed-vocab uses), the tokenizer and preprocessor."""
        import torch

        from modeling.encoders import ImageEncoder, TextEncoder
        from modeling.onnx_export import export_onnx

        params = ctx.params
        model_cfg = params.model
        size, length = model_cfg.image_size, model_cfg.context_length
        export = functools.partial(
            export_onnx, output_name=model_io.IMAGE_OUTPUT, opset=params.opset, simplify=params.simplify
        )
        text = functools.partial(
            export,
            TextEncoder(loaded.model, loaded.tokenizer.eos_token_id),
            input_name=model_io.TEXT_INPUT,
            output_name=model_io.TEXT_OUTPUT,
        )
        example_ids = loaded.tokenizer(
            "a photo of a cat", padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )["input_ids"].to(torch.int64)
        counts = {
            "image": export(
                ImageEncoder(loaded.model),
                torch.zeros(1, 3, size, size),
                ctx.out_dir / model_io.IMAGE_MODEL_FILE,
                input_name=model_io.IMAGE_INPUT,
            ),
            "text": text(example_ids, ctx.out_dir / model_io.TEXT_MODEL_FILE),
        }
        text(
            example_ids.repeat(2, 1),
            ctx.out_dir / model_io.TEXT_BATCH_MODEL_FILE,
            dynamic_axes={0: "batch", 1: "length"},
        )
        loaded.tokenizer.save_pretrained(ctx.out_dir)
        loaded.image_processor.save_pretrained(ctx.out_dir)
        return counts


def _export_info(params: ExportStageParams, loaded: Any, counts: dict[str, dict[str, int]]) -> model_io.ExportInfo:
    size, length = params.model.image_size, params.model.context_length
    dim = loaded.model.config.projection_dim
    tokenizer = loaded.tokenizer
    embedding = model_io.Tensor(model_io.IMAGE_OUTPUT, "float32", (1, dim))
    return model_io.ExportInfo(
        model=params.model.id,
        revision=params.model.revision,
        opset=params.opset,
        image_size=size,
        context_length=length,
        projection_dim=dim,
        image=model_io.EncoderFile(
            model_io.IMAGE_MODEL_FILE,
            model_io.Tensor(model_io.IMAGE_INPUT, "float32", (1, 3, size, size)),
            embedding,
            counts["image"],
        ),
        text=model_io.EncoderFile(
            model_io.TEXT_MODEL_FILE,
            model_io.Tensor(model_io.TEXT_INPUT, "int64", (1, length)),
            model_io.Tensor(model_io.TEXT_OUTPUT, "float32", (1, dim)),
            counts["text"],
        ),
        tokenizer={
            "file": model_io.TOKENIZER_FILE,
            "bos_id": tokenizer.bos_token_id,
            "eos_id": tokenizer.eos_token_id,
            "pad_id": tokenizer.pad_token_id,
        },
    )
