"""verify: the exported ONNX files are valid, static, NPU-compatible, and match PyTorch on real inputs.

Every check is a report line; all of them run, then the stage fails once listing the failures. The
golden inputs and the PyTorch reference outputs are saved for the smoke test on the device.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from common.contract import JsonFile
from modeling.model_config import ModelConfig
from pipeline.config import ConfigPath, Strict
from pipeline.errors import StageError, ValidationFailed
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.terminal import Check, print_checks
from runtime import model_io
from runtime.golden import GOLDEN_DIR, GoldenSet, Reference
from runtime.preprocess import (
    IMAGE_SUFFIXES,
    Fidelity,
    PreprocessConfig,
    draft_applies,
    find_images,
    open_image,
    preprocess,
)
from runtime.similarity import cosine
from runtime.tokenizer import TextTokenizer
from stages.shipped import SHIPPED

if TYPE_CHECKING:
    from stages.config import PipelineConfig

# transformers' CLIPImageProcessor and our numpy/Pillow copy differ only by float rounding.
PREPROCESS_TOLERANCE = 1e-5
# Fidelity.FAST (serve, caption) against exact preprocessing, in image-embedding cosine.
FAST_MIN_COSINE = 0.999

SUPPORTED_TARGETS = ("ax650",)
DEFAULT_PROMPTS = (
    "a photo of an astronaut",
    "a photo of a cat",
    "a cup of coffee on a table",
    "a rocket on the launch pad",
    "a portrait of a woman in uniform, black and white photograph",
    "an oil painting of a mountain landscape at sunset, highly detailed",
)


@dataclass(frozen=True)
class Sample:
    """One golden input's embedding compared two ways (max_abs_diff: not for the fast path's cosine)."""

    input: str
    cosine: float
    max_abs_diff: float | None = None


@dataclass(frozen=True)
class Agreement:
    """One comparison over its samples; the minima are None when nothing differed enough to compare."""

    samples: tuple[Sample, ...] = ()
    min_cosine: float | None = None
    median_cosine: float | None = None
    max_abs_diff: float | None = None


@dataclass(frozen=True)
class VerificationReport(JsonFile, file="verification.json", made_by="invoke verify"):
    """What verify found: every check, onnxruntime vs PyTorch per output, and fast vs exact preprocessing."""

    model: str
    target: str
    passed: bool
    checks: tuple[Check, ...]
    numerics: dict[str, Agreement]
    fast_preprocessing: Agreement


class GraphCheckParams(Strict):
    """What an image model's check reads (the tagger's too): the NPU's table, the photos, the output bar."""

    target: Literal[SUPPORTED_TARGETS] = "ax650"  # type: ignore[valid-type]
    images: ConfigPath = SHIPPED / "data/images"
    max_images: int = Field(4, ge=1, le=64)
    max_abs_diff: float = Field(1e-3, gt=0, le=10)


class VerifyParams(GraphCheckParams):
    prompts: tuple[str, ...] = Field(DEFAULT_PROMPTS, min_length=1, strict=False)  # a YAML list
    min_cosine: float = Field(0.9999, ge=0, le=1)


class VerifyStageParams(VerifyParams):
    """verify's settings and the model it compares the export with."""

    model: ModelConfig


class VerifyStage(Stage):
    name = "verify"
    help = "Check the ONNX files (opset, static shapes, NPU op table) and compare onnxruntime with PyTorch."
    tools = ("torch", "transformers", "onnx", "onnxruntime", "tokenizers", "pillow", "numpy")
    settings = VerifyParams
    after = ("export",)
    outputs = (VerificationReport.FILE, f"{GOLDEN_DIR}/{GoldenSet.FILE}")

    def params(self, config: PipelineConfig) -> VerifyStageParams:
        return VerifyStageParams(model=config.model, **dict(config.stages.verify))

    def external_inputs(self, params: VerifyStageParams) -> list[Path]:
        return find_images(params.images)

    def run(self, ctx: StageContext[VerifyStageParams]) -> StageResult:
        from modeling.graph_checks import check_model_file
        from modeling.op_tables import OP_TABLES

        params = ctx.params
        export_dir = ctx.upstream("export")
        info = model_io.ExportInfo.read(export_dir)
        table = OP_TABLES[params.target]
        checks = []
        for part in ("image", "text"):
            spec = info.encoder(part)
            checks += check_model_file(
                export_dir / spec.file,
                opset=info.opset,
                inputs=[_tensor_spec(spec.input)],
                outputs=[_tensor_spec(spec.output)],
                table=table,
            )
        numeric_checks, numerics = _compare_with_pytorch(ctx, info)
        checks += numeric_checks
        fidelity_check, fidelity = _fast_path_fidelity(export_dir, info, params.images)
        checks.append(fidelity_check)
        failures = [f"{c.name}: {c.detail}" for c in checks if not c.passed]
        report = VerificationReport(info.model, params.target, not failures, tuple(checks), numerics, fidelity)
        report.write(ctx.out_dir)
        report.write_to(ctx.report_file)
        print_checks(f"verify ({params.target})", terminal_view(checks, params.target))
        if failures:
            raise ValidationFailed(self.name, failures, str(ctx.report_file))
        worst = min(n.min_cosine or 0.0 for n in numerics.values())
        return StageResult(
            summary=f"{len(checks)} checks passed; onnxruntime vs PyTorch min cosine {worst:.7f}",
            figures={
                name: {"min_cosine": n.min_cosine, "max_abs_diff": n.max_abs_diff} for name, n in numerics.items()
            },
        )


def terminal_view(checks: list[Check], target: str) -> list[Check]:
    """The JSON report keeps a line per operator; the terminal gets one line per file unless one fails."""
    view, op_counts = [], {}
    for check in checks:
        file, sep, _ = check.name.partition(": op ")
        if sep and check.passed:
            op_counts[file] = op_counts.get(file, 0) + 1
        else:
            view.append(check)
    for file, count in op_counts.items():
        view.append(Check(f"{file}: operators", True, f"{count} op types, all in the {target} table"))
    return view


def _tensor_spec(tensor: model_io.Tensor) -> Any:
    from onnx import helper

    from modeling.graph_checks import TensorSpec

    return TensorSpec(tensor.name, helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype)), tensor.shape)


def golden_images(params_images: Path, limit: int) -> list[Path]:
    images = find_images(params_images)
    if not images:
        raise StageError(
            "verify",
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in {params_images}",
            hint="set stages.verify.images to a folder of real photos",
        )
    return images[:limit]


def _compare_with_pytorch(
    ctx: StageContext[VerifyStageParams], info: model_io.ExportInfo
) -> tuple[list[Check], dict[str, Agreement]]:
    """Run golden inputs through onnxruntime and PyTorch; returns check lines and per-output figures."""
    import torch

    from modeling.loading import load_model

    params, export_dir = ctx.params, ctx.upstream("export")
    loaded = load_model(params.model, ctx.cache_dir)
    images = golden_images(params.images, params.max_images)
    pixels, ids, checks = _inputs_checked_against_transformers(loaded, images, export_dir, info, params.prompts)
    # The family's own reference: transformers' get_image_features / get_text_features, the mask as the
    # family feeds it (Chinese-CLIP masks padding; CLIP's causal attention makes a mask moot; SigLIP had none).
    text_inputs = {"input_ids": torch.from_numpy(ids)}
    if info.facts.text.masked:
        text_inputs["attention_mask"] = torch.from_numpy((ids != info.facts.text.pad_id).astype(np.int64))
    with torch.no_grad():
        torch_image = _features(loaded.model.get_image_features(pixel_values=torch.from_numpy(pixels)))
        torch_text = _features(loaded.model.get_text_features(**text_inputs))
    runs = {
        model_io.IMAGE_OUTPUT: (info.image, pixels, torch_image.numpy(), [p.name for p in images]),
        model_io.TEXT_OUTPUT: (info.text, ids, torch_text.numpy(), list(params.prompts)),
    }
    numerics: dict[str, Agreement] = {}
    for output, (spec, inputs, reference, labels) in runs.items():
        output_checks, numerics[output] = _onnxruntime_vs_pytorch(
            export_dir, spec, output, inputs, reference, labels, params
        )
        checks += output_checks
    _save_golden(ctx.out_dir / GOLDEN_DIR, pixels, ids, runs)
    return checks, numerics


def _features(output: Any) -> Any:
    """get_*_features' embeddings: a tensor, or (transformers 5) the pooled output of a model output."""
    return output if hasattr(output, "numpy") else output.pooler_output


def _inputs_checked_against_transformers(
    loaded: Any, images: list[Path], export_dir: Path, info: model_io.ExportInfo, prompts: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, list[Check]]:
    """The golden pixels and token ids as runtime/ makes them, checked against transformers' own."""
    preprocess_cfg = info.facts.preprocess
    opened = [open_image(path) for path in images]
    pixels = np.concatenate([preprocess(image, preprocess_cfg) for image in opened])
    reference_pixels = loaded.image_processor(images=opened, return_tensors="np")["pixel_values"]
    ids = TextTokenizer.of_export(export_dir, info).encode_batch(list(prompts))[0]
    reference_ids = loaded.tokenizer(
        list(prompts), padding="max_length", max_length=info.context_length, truncation=True
    )["input_ids"]
    pre_diff = float(np.abs(pixels - reference_pixels).max())
    same_ids = ids.tolist() == list(reference_ids)
    ids_detail = f"{len(prompts)} prompts, ids {'identical' if same_ids else 'differ'}"
    checks = [
        Check("preprocessing vs transformers", pre_diff <= PREPROCESS_TOLERANCE, f"max abs diff {pre_diff:.2e}"),
        Check("tokenizer vs transformers", same_ids, ids_detail),
    ]
    return pixels, ids, checks


def _onnxruntime_vs_pytorch(
    export_dir: Path,
    spec: model_io.EncoderFile,
    output: str,
    inputs: np.ndarray,
    reference: np.ndarray,
    labels: list[str],
    params: Any,
) -> tuple[list[Check], Agreement]:
    """One exported model on every golden input, row by row, against PyTorch's outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(export_dir / spec.file), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run([output], {spec.input.name: row[None]})[0] for row in inputs])
    samples = tuple(
        Sample(label, cosine(a, b), float(np.abs(a - b).max()))
        for label, a, b in zip(labels, got, reference, strict=True)
    )
    worst_cosine = min(s.cosine for s in samples)
    worst_diff = max(s.max_abs_diff or 0.0 for s in samples)
    checks = [
        Check(
            f"{output}: cosine onnxruntime vs PyTorch",
            worst_cosine >= params.min_cosine,
            f"min {worst_cosine:.7f} over {len(samples)} (need >= {params.min_cosine})",
        ),
        Check(
            f"{output}: max abs diff",
            worst_diff <= params.max_abs_diff,
            f"{worst_diff:.2e} (need <= {params.max_abs_diff:g})",
        ),
    ]
    return checks, Agreement(samples, min_cosine=worst_cosine, max_abs_diff=worst_diff)


def _fast_path_fidelity(export_dir: Path, info: model_io.ExportInfo, photos: Path) -> tuple[Check, Agreement]:
    """The float image encoder's embedding of fast vs exact preprocessing, on every photo large enough
    for the two to differ: at its own size and at each halving that still differs (re-encoded as JPEG)."""
    import onnxruntime as ort

    config = info.facts.preprocess
    spec = info.image
    session = ort.InferenceSession(str(export_dir / spec.file), providers=["CPUExecutionProvider"])

    def embed(pixels: np.ndarray) -> np.ndarray:
        return session.run([model_io.IMAGE_OUTPUT], {spec.input.name: pixels})[0][0]

    samples = []
    for path in find_images(photos):
        for label, data in _sizes_where_fast_differs(path, config):
            exact = embed(preprocess(open_image(data), config))
            fast = embed(preprocess(open_image(data, config, Fidelity.FAST), config, Fidelity.FAST))
            samples.append(Sample(label, cosine(exact, fast)))
    name = "fast preprocessing vs exact"
    if not samples:
        detail = f"no photo in {photos} is large enough for the fast path to differ: identical on all"
        return Check(name, True, detail), Agreement()
    cosines = sorted(s.cosine for s in samples)
    figures = Agreement(tuple(samples), min_cosine=cosines[0], median_cosine=cosines[len(cosines) // 2])
    detail = (
        f"embedding cosine min {cosines[0]:.6f}, median {figures.median_cosine:.6f} over {len(samples)} "
        f"photo sizes (need >= {FAST_MIN_COSINE})"
    )
    return Check(name, cosines[0] >= FAST_MIN_COSINE, detail), figures


def _sizes_where_fast_differs(path: Path, config: PreprocessConfig) -> list[tuple[str, bytes]]:
    image = open_image(path)
    found, data = [], path.read_bytes()
    while draft_applies(image.size, config):
        found.append((f"{path.name} at {image.width}x{image.height}", data))
        image = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)
        encoded = io.BytesIO()
        image.save(encoded, "JPEG", quality=95)
        data = encoded.getvalue()
    return found


def _save_golden(directory: Path, pixels: np.ndarray, ids: np.ndarray, runs: dict[str, Any]) -> None:
    """Inputs and float references for compile and the device smoke test, one row per sample."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {model_io.IMAGE_INPUT: pixels, model_io.TEXT_INPUT: ids}
    references = {}
    for output, (spec, _inputs, reference, labels) in runs.items():
        arrays[output] = reference.astype(np.float32)
        references[output] = Reference(spec.file, spec.input.name, tuple(labels))
    GoldenSet.write_arrays(directory, arrays)
    GoldenSet(references).write(directory)
