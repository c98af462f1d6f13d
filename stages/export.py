"""export: the image and text encoders, each with its projection or pooling head, to static-shape ONNX.

Outputs (artifacts/export/): image_encoder.onnx, text_encoder.onnx, the tokenizer and image processor
files, and export.json: the tensor contract and the model's own facts (family, pooling, padding,
preprocessing, logit scale and bias) that every later stage and the device read; plus
text_encoder_batched.onnx (dynamic batch and length) that embed-vocab runs on the controller.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from common.hashing import sha256_file
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
    help = "Export the image and text encoders (CLIP, SigLIP, Chinese-CLIP; with projections) to ONNX."
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
        from modeling import families
        from modeling.loading import load_model

        params = ctx.params
        model_cfg = params.model
        with progress_steps(self.name) as step:
            step(f"loading {model_cfg.id}")
            loaded = load_model(model_cfg, ctx.cache_dir)
            facts = families.model_facts(loaded.family, loaded.model, loaded.tokenizer, loaded.image_processor)
            size = families.image_size(loaded.model, facts.preprocess, model_cfg.image_size)
            length = families.context_length(loaded.family, loaded.model, loaded.tokenizer, model_cfg.context_length)
            step(f"exporting the {loaded.family.title} image and text encoders")
            counts = self._export(ctx, loaded, facts, length)
        info = _export_info(params, loaded, facts, counts, size, length, ctx.out_dir)
        info.write(ctx.out_dir)
        dim = info.projection_dim
        return StageResult(
            summary=f"{loaded.family.title}: image [1,3,{size},{size}] -> [1,{dim}], text [1,{length}] -> [1,{dim}], "
            f"opset {params.opset}",
            figures={"nodes": counts, "projection_dim": dim, "family": loaded.family.name},
        )

    def _export(
        self, ctx: StageContext[ExportStageParams], loaded: Any, facts: model_io.ModelFacts, length: int
    ) -> dict[str, dict[str, int]]:
        """Both encoders (and the batched text encoder embed-vocab uses), the tokenizer and preprocessor."""
        import torch

        from modeling.encoders import ImageEncoder, TextEncoder
        from modeling.families import backend_tokenizer
        from modeling.onnx_export import export_onnx

        params = ctx.params
        size = facts.preprocess.crop_height
        export = functools.partial(
            export_onnx, output_name=model_io.IMAGE_OUTPUT, opset=params.opset, simplify=params.simplify
        )
        text = functools.partial(
            export,
            TextEncoder(loaded.model, facts.text),
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
        backend_tokenizer(loaded.tokenizer).save(str(ctx.out_dir / model_io.TOKENIZER_FILE))
        loaded.image_processor.save_pretrained(ctx.out_dir)
        return counts


def _export_info(
    params: ExportStageParams,
    loaded: Any,
    facts: model_io.ModelFacts,
    counts: dict[str, dict[str, int]],
    size: int,
    length: int,
    out_dir: Path,
) -> model_io.ExportInfo:
    config = loaded.model.config
    # CLIP and Chinese-CLIP project to projection_dim; SigLIP's pooling heads keep the hidden size.
    dim = int(getattr(config, "projection_dim", None) or config.vision_config.hidden_size)
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
            sha256_file(out_dir / model_io.IMAGE_MODEL_FILE),
        ),
        text=model_io.EncoderFile(
            model_io.TEXT_MODEL_FILE,
            model_io.Tensor(model_io.TEXT_INPUT, "int64", (1, length)),
            model_io.Tensor(model_io.TEXT_OUTPUT, "float32", (1, dim)),
            counts["text"],
            sha256_file(out_dir / model_io.TEXT_MODEL_FILE),
        ),
        facts=facts,
    )
