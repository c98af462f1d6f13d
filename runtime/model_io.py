"""The contract between export and the device: file names, tensor names, dtypes, and export.json.

Shared by the controller (export, verify, calibrate, embed-vocab, the toolchains) and the device runtime,
so both sides agree by construction: export.json is written and read only through ExportInfo.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

from common.contract import JsonFile
from common.errors import ModelFilesError
from runtime.preprocess import PreprocessConfig

IMAGE_MODEL_FILE = "image_encoder.onnx"
TEXT_MODEL_FILE = "text_encoder.onnx"
# The same text encoder with dynamic batch and length, for embed-vocab on the controller (never fetched):
# with causal attention (CLIP) an EOS at position p sees only tokens 0..p, so ids cut after the batch's
# last EOS give the same embedding as the full context, at a fraction of the work (see TextFacts.cuttable).
TEXT_BATCH_MODEL_FILE = "text_encoder_batched.onnx"
IMAGE_INPUT = "pixel_values"  # float32 [1, 3, S, S], normalized with the model's own mean and std
IMAGE_OUTPUT = "image_embeds"  # float32 [1, projection_dim]
TEXT_INPUT = "input_ids"  # int64 [1, context_length] in ONNX; int32 on the NPU (src_dtype S32); a family
# whose text encoder needs an attention mask computes it in the graph from the ids (`ids != pad_id`)
TEXT_OUTPUT = "text_embeds"  # float32 [1, projection_dim]
TOKENIZER_FILE = "tokenizer.json"
PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # numpy's name: float32, int64
    shape: tuple[int, ...]


@dataclass(frozen=True)
class EncoderFile:
    file: str
    input: Tensor
    output: Tensor
    nodes: dict[str, int] = field(default_factory=dict)  # before and after simplification
    sha256: str = ""  # of `file`: which model label tables and compiled models came from


class Pooling(str, enum.Enum):
    """Which position of the text encoder's last hidden state becomes the text embedding."""

    FIRST_EOS = "first_eos"  # CLIP: the first end-of-text token
    LAST = "last"  # SigLIP: the last position (padding included, as it was trained)
    FIRST = "first"  # Chinese-CLIP: [CLS]


@dataclass(frozen=True)
class TextFacts:
    """How the family's text encoder reads ids: what the torch-free tokenizer must reproduce."""

    pad_id: int
    pad_side: str  # "right" or "left", as the model's tokenizer pads
    eos_id: int | None  # the end token the tokenizer appends (None: it appends none)
    pooling: Pooling
    causal: bool  # each position sees only those before it
    masked: bool  # padding is masked out of attention (in the graph, from pad_id)

    @property
    def cuttable(self) -> bool:
        """Whether ids cut after the last end token embed as the full context does: only where nothing
        before the pooled position can see what follows it (causal attention, right padding)."""
        return self.causal and self.pooling is Pooling.FIRST_EOS and self.pad_side == "right"


@dataclass(frozen=True)
class ScoreScale:
    """The model's own logit scale (exp'd) and bias: what turns a cosine into the model's probability.
    A bias (SigLIP) means per-label sigmoid(scale*cos + bias); none (CLIP) means a softmax of scale*cos
    over the labels compared."""

    logit_scale: float
    logit_bias: float | None = None

    @property
    def sigmoid(self) -> bool:
        return self.logit_bias is not None

    def probability(self, cosine: float) -> float:
        """SigLIP's per-label probability (only for a family with a bias)."""
        return 1.0 / (1.0 + math.exp(-(self.logit_scale * cosine + (self.logit_bias or 0.0))))

    def cosine_at(self, probability: float) -> float:
        """The cosine at which `probability` is reached: the inverse of `probability`."""
        if probability <= 0 or probability >= 1:
            return -math.inf if probability <= 0 else math.inf
        return (math.log(probability / (1 - probability)) - (self.logit_bias or 0.0)) / self.logit_scale


@dataclass(frozen=True)
class ModelFacts:
    """The model's own facts, from its config, tokenizer and image processor: the same everywhere after
    export (verify, calibrate, embed-vocab and the device read them here, never a family's defaults)."""

    family: str  # config.json's model_type: clip, siglip, chinese_clip
    text: TextFacts
    preprocess: PreprocessConfig
    scores: ScoreScale


@dataclass(frozen=True)
class ExportInfo(JsonFile, file="export.json", made_by="invoke export"):
    """export.json: what export wrote, read by every later stage, the toolchains and the device runtime."""

    model: str
    revision: str
    opset: int
    image_size: int
    context_length: int
    projection_dim: int
    image: EncoderFile
    text: EncoderFile
    facts: ModelFacts

    def encoder(self, part: str) -> EncoderFile:
        """`image` or `text`."""
        return {"image": self.image, "text": self.text}[part]


@dataclass(frozen=True)
class CompiledModel:
    """One encoder as compile made it: its file, and how close it stays to the float model."""

    file: str
    sha256: str
    cosine: float | None  # quantized vs float; None when the toolchain measured none
    cosine_source: str | None  # how `cosine` was measured, in words
    calibration_samples: int | None = None  # onnxruntime: the samples its calibration used
    log: str | None = None  # pulsar2: the build log beside the model
    precision_table: str | None = None  # pulsar2: the precision table as the tool printed it
    worst_layers: tuple[dict[str, Any], ...] = ()  # pulsar2: the layers furthest from float
    precision: dict[str, Any] | None = None  # pulsar2: the analysis and every row of its table


@dataclass(frozen=True)
class Toolchain:
    """Which Pulsar2 image built the models, by id (a tag can be moved to another image), and on which
    Docker Engine."""

    image: str
    image_id: str
    engine_version: str
    engine_os: str


@dataclass(frozen=True)
class CompileReport(JsonFile, file="compiled.json", made_by="invoke compile"):
    """compile's report (artifacts/compile/compiled.json; fetch copies it into the device's manifest.json): the
    target, and per encoder (by export's file stem) the compiled file with its figures."""

    target: str
    data_type: str
    host: str
    models: dict[str, CompiledModel]
    transfers: dict[str, Any] | None = None  # pulsar2 on a build host: what travelled
    toolchain: Toolchain | None = None  # pulsar2: the image and engine that built the models

    def file(self, stem: str) -> str:
        """The compiled file of the encoder export wrote as `<stem>.onnx`."""
        try:
            return self.models[stem].file
        except KeyError as exc:
            raise ModelFilesError(
                f"compile's report names no compiled model for {stem}: run `invoke compile` and `invoke fetch`"
            ) from exc
