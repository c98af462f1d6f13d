"""The model families export understands, chosen by config.json's `model_type`, and the facts each model
carries into export.json (runtime.model_io.ModelFacts).

What differs between families is small and stated here once: how the text encoder pools its last hidden
state, whether its attention is causal, whether padding is masked, and the text length it was trained
at. Everything else is read from the model itself: its tokenizer (pad id and side, the end token it
appends), its image processor (resize, crop, mean, std), its logit scale and bias.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ModelLoadError
from runtime.model_io import ModelFacts, Pooling, ScoreScale, TextFacts
from runtime.preprocess import PreprocessConfig


@dataclass(frozen=True)
class Family:
    name: str  # config.json's model_type
    title: str  # how the README and errors name it
    pooling: Pooling
    causal: bool
    masked: bool
    context_length: int | None = None  # the trained text length when the config's maximum is larger


FAMILIES = {
    family.name: family
    for family in (
        Family("clip", "CLIP", Pooling.FIRST_EOS, causal=True, masked=False),
        Family("siglip", "SigLIP / SigLIP2 (fixed resolution)", Pooling.LAST, causal=False, masked=False),
        Family("chinese_clip", "Chinese-CLIP", Pooling.FIRST, causal=False, masked=True, context_length=52),
    )
}
# Model types that are CLIP-like but cannot run as a static graph, with what to use instead.
_UNSUPPORTED_HINTS = {
    "siglip2": "SigLIP2's NaFlex checkpoints choose their patch grid per image, which a static NPU graph cannot; "
    "use a fixed-resolution SigLIP2 checkpoint (model_type siglip), such as google/siglip2-base-patch16-224",
}


def family_of(model_type: str | None, where: str) -> Family:
    """The family of a model's config.json model_type; anything else is one error naming the supported ones."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    supported = ", ".join(FAMILIES)
    hint = _UNSUPPORTED_HINTS.get(model_type or "", f"point model.id at a model of a supported family ({supported})")
    raise ModelLoadError(
        f"{where} is a {model_type!r} model; supported model families (config.json model_type): {supported}",
        hint=hint,
    )


def context_length(family: Family, model: Any, tokenizer: Any, override: int | None) -> int:
    """The text length export fixes: the config's override, else the family's trained length, else the
    tokenizer's and the position table's smaller."""
    longest = int(model.config.text_config.max_position_embeddings)
    if override is not None:
        if override > longest:
            raise ModelLoadError(
                f"model.context_length {override} exceeds the model's {longest}",
                hint=f"set model.context_length: {longest}, or drop it to use the model's own",
            )
        return override
    tokenizer_max = int(tokenizer.model_max_length) if tokenizer.model_max_length < 1_000_000 else longest
    return min(family.context_length or longest, tokenizer_max, longest)


def image_size(model: Any, preprocess: PreprocessConfig, override: int | None) -> int:
    """The square input the vision tower was trained at, which the image processor must also make."""
    trained = int(model.config.vision_config.image_size)
    if override is not None and override != trained:
        raise ModelLoadError(
            f"model.image_size is {override} but the model was trained at {trained}",
            hint=f"set model.image_size: {trained}, or drop it to use the model's own",
        )
    if (preprocess.crop_height, preprocess.crop_width) != (trained, trained):
        raise ModelLoadError(
            f"the model's image processor makes {preprocess.crop_height}x{preprocess.crop_width} images but its "
            f"vision tower takes {trained}x{trained}",
            hint="fix preprocessor_config.json's size/crop_size in the model folder",
        )
    return trained


def model_facts(family: Family, model: Any, tokenizer: Any, processor: Any) -> ModelFacts:
    """What the exported graphs and the torch-free runtime need to know about this model."""
    return ModelFacts(
        family=family.name,
        text=_text_facts(family, tokenizer),
        preprocess=preprocess_config(processor),
        scores=ScoreScale(
            logit_scale=float(model.logit_scale.detach().exp()),
            logit_bias=float(model.logit_bias.detach()) if getattr(model, "logit_bias", None) is not None else None,
        ),
    )


def backend_tokenizer(tokenizer: Any) -> Any:
    """The `tokenizers` pipeline the device runs (saved as tokenizer.json): a fast tokenizer's own, or for
    SigLIP's SentencePiece-only tokenizer one made here that gives its ids."""
    if getattr(tokenizer, "is_fast", False) and getattr(tokenizer, "backend_tokenizer", None) is not None:
        return tokenizer.backend_tokenizer
    if type(tokenizer).__name__ == "SiglipTokenizer":
        return _siglip_sentencepiece(tokenizer)
    raise ModelLoadError(
        f"the model's tokenizer ({type(tokenizer).__name__}) has no tokenizer.json, which the device's "
        "torch-free tokenizer reads",
        hint="use a checkpoint that ships tokenizer.json",
    )


def _siglip_sentencepiece(tokenizer: Any) -> Any:
    """SiglipTokenizer (google/siglip-*: spiece.model, no tokenizer.json) as a `tokenizers` pipeline:
    transformers' SentencePiece converter, after SiglipTokenizer's own `canonicalize_text` (lowercase,
    punctuation removed, whitespace runs as one space, trimmed) as normalizers, then the `</s>` it appends.
    One difference is known: a literal `</s>` inside a text (a special token, split out before the rest)
    is followed by a word-start marker here and not there; verify compares every id of its prompts."""
    import string

    from tokenizers import AddedToken, Regex, Tokenizer, normalizers, processors
    from transformers.convert_slow_tokenizer import SpmConverter

    converted = SpmConverter(tokenizer).converted()
    canonical = [normalizers.Lowercase()] if tokenizer.do_lower_case else []
    canonical += [
        normalizers.Replace(Regex("[" + re.escape(string.punctuation) + "]"), ""),
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(),
    ]
    converted.normalizer = normalizers.Sequence([*canonical, converted.normalizer])
    eos = tokenizer.eos_token
    converted.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, tokenizer.eos_token_id)]
    )
    # Only the tokenizer's own special tokens are matched in raw text (the converter adds every control piece).
    data = json.loads(converted.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in tokenizer.all_special_tokens]
    rebuilt = Tokenizer.from_str(json.dumps(data))
    rebuilt.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in tokenizer.all_special_tokens])
    return rebuilt


def _text_facts(family: Family, tokenizer: Any) -> TextFacts:
    backend_tokenizer(tokenizer)  # one that the device can run, or the error saying why not
    if tokenizer.pad_token_id is None:
        raise ModelLoadError(
            "the model's tokenizer has no padding token", hint="set pad_token in tokenizer_config.json"
        )
    ids = tokenizer("a")["input_ids"]
    appended = ids[-1] if ids and ids[-1] in set(tokenizer.all_special_ids) else None
    if family.pooling is Pooling.FIRST_EOS and appended is None:
        raise ModelLoadError("the model's tokenizer appends no end token, which CLIP's text encoder pools at")
    return TextFacts(
        pad_id=int(tokenizer.pad_token_id),
        pad_side=str(tokenizer.padding_side),
        eos_id=None if appended is None else int(appended),
        pooling=family.pooling,
        causal=family.causal,
        masked=family.masked,
    )


def _get(mapping: Any, key: str) -> Any:
    """A size entry whether transformers keeps it as a dict or as an object (SizeDict)."""
    if mapping is None:
        return None
    return mapping.get(key) if isinstance(mapping, dict) else getattr(mapping, key, None)


def preprocess_config(processor: Any) -> PreprocessConfig:
    """transformers' image processor as numbers: shortest edge + crop, or a stretch to height x width."""
    size = processor.size
    edge, height, width = _get(size, "shortest_edge"), _get(size, "height"), _get(size, "width")
    if edge is None and (height is None or width is None):
        raise ModelLoadError(f"the image processor's size {size!r} names neither shortest_edge nor height and width")
    resize = (int(edge), int(edge)) if edge is not None else (int(height), int(width))
    crop = processor.crop_size if getattr(processor, "do_center_crop", False) else None
    crop_height, crop_width = (int(_get(crop, "height")), int(_get(crop, "width"))) if crop else resize
    if edge is not None and crop is None:
        raise ModelLoadError(
            "the image processor resizes the shortest edge without a crop: its output has no fixed size"
        )
    return PreprocessConfig(
        shortest_edge=None if edge is None else int(edge),
        resize_height=resize[0],
        resize_width=resize[1],
        crop_height=crop_height,
        crop_width=crop_width,
        resample=int(processor.resample),
        rescale_factor=float(processor.rescale_factor),
        mean=tuple(float(v) for v in processor.image_mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in processor.image_std),  # type: ignore[arg-type]
    )
