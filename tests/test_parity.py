"""runtime/'s numpy preprocessing and `tokenizers` tokenization match transformers' CLIP processors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.model_io import ExportInfo
from runtime.preprocess import open_image, preprocess
from runtime.tokenizer import TextTokenizer

REPO = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(0)


def _rgb(width: int, height: int) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _cases() -> dict[str, Image.Image]:
    photo = Image.open(REPO / "data/images/cat.jpg")
    photo.load()
    rgba = _rgb(300, 200).convert("RGBA")
    rgba.putalpha(Image.fromarray(RNG.integers(0, 256, (200, 300), dtype=np.uint8), "L"))
    transparent_p = _rgb(120, 90).convert("P")
    transparent_p.info["transparency"] = 0
    sixteen = Image.fromarray(RNG.integers(0, 65536, (150, 180), dtype=np.uint16))
    return {
        "photo": photo,
        "square": _rgb(224, 224),
        "one_pixel_larger": _rgb(225, 224),
        "portrait": _rgb(200, 640),
        "very_wide": _rgb(2000, 40),
        "very_tall": _rgb(30, 1500),
        "tiny": _rgb(3, 2),
        "single_pixel": _rgb(1, 1),
        "odd_sizes": _rgb(333, 517),
        "rgba": rgba,
        "la": rgba.convert("LA"),
        "l": photo.convert("L"),
        "p": photo.convert("P"),
        "p_transparent": transparent_p,
        "cmyk": photo.convert("CMYK"),
        "one_bit": photo.convert("1"),
        "sixteen_bit": sixteen,
        "i32": sixteen.convert("I"),
    }


@pytest.fixture(scope="module")
def reference(built_artifacts: Path):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor.from_pretrained(built_artifacts / "export")


@pytest.mark.parametrize("name", sorted(_cases()))
def test_preprocessing_matches_transformers(name: str, reference, built_artifacts: Path) -> None:
    image = _cases()[name]
    ours = preprocess(image, ExportInfo.read(built_artifacts / "export").facts.preprocess)
    theirs = reference(images=image, return_tensors="np")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 224, 224) and ours.dtype == np.float32
    assert float(np.abs(ours - theirs).max()) <= 1e-5


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_encoded_formats_decode_like_pillow(fmt: str) -> None:
    buffer = io.BytesIO()
    _rgb(64, 48).save(buffer, format=fmt)
    image = open_image(buffer.getvalue())
    assert image.mode == "RGB" and image.size == (64, 48)


PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "an oil painting of a mountain landscape at sunset, highly detailed",
    "don't stop: it's 100% real!!! (really) [sic] {braces} #hash @at",
    "  lots   of\twhitespace \n and newlines  ",
    "café naïve façade, Zürich — über",
    "日本語のテキスト and emoji 🐱🚀",
    "",
    "word " * 100,
    "<|startoftext|> literal specials <|endoftext|>",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tokenizer_ids_match_transformers(prompt: str, built_artifacts: Path) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(built_artifacts / "export")
    expected = reference(prompt, padding="max_length", max_length=77, truncation=True)["input_ids"]
    export = built_artifacts / "export"
    ours = TextTokenizer.of_export(export, ExportInfo.read(export)).encode(prompt)
    assert ours.dtype == np.int64 and ours.shape == (1, 77)
    assert ours[0].tolist() == expected
