"""Image preprocessing in numpy/Pillow, from the model's facts in export.json.

The same code makes the golden inputs (verify), the calibration set and the device's inputs, so what the
NPU was calibrated and checked on is exactly what it is fed. Follows transformers' Pillow image
processors: convert to RGB, resize (the shortest side, or stretched to a fixed size; on uint8), center
crop, rescale, normalize, CHW.

Fidelity.EXACT is that, bit for bit. Fidelity.FAST (serve and caption) decodes and resizes only the
pixels the model needs: a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose short side
stays at least FAST_OVERSAMPLE times the model's input, and the resize first box-reduces by whole
factors while the bicubic step keeps FAST_REDUCING_GAP times the output size. verify measures what this
costs in embedding cosine on its photos.
"""

from __future__ import annotations

import enum
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.errors import InvalidImage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FAST_OVERSAMPLE = 1.5  # the decoded short side stays >= 1.5x the model's input (see README: fidelity)
FAST_REDUCING_GAP = 3.0  # Pillow's reducing_gap: past 3x, a box reduce by whole factors comes first


class Fidelity(str, enum.Enum):
    """How images are decoded and resized; a str so config files and command lines name it as is."""

    EXACT = "exact"  # transformers' image processor, bit for bit (verify, calibrate, smoke test)
    FAST = "fast"  # decode and resize only the pixels the model needs (serve, caption)


@dataclass(frozen=True)
class PreprocessConfig:
    """The model's image processor as numbers (export reads them from transformers' processor): resize
    the shortest edge keeping the aspect (CLIP), or stretch to resize_height x resize_width (SigLIP,
    Chinese-CLIP); then center crop to crop_height x crop_width (the same size when there is no crop)."""

    shortest_edge: int | None = 224  # None: stretch to resize_height x resize_width
    resize_height: int = 224
    resize_width: int = 224
    crop_height: int = 224
    crop_width: int = 224
    resample: int = Image.Resampling.BICUBIC
    rescale_factor: float = 1 / 255
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """An image's (height, width) after the resize step."""
        if self.shortest_edge is None:
            return self.resize_height, self.resize_width
        return resized_size(height, width, self.shortest_edge)

    def draft_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) a fast decode must keep at least: FAST_OVERSAMPLE x what the resize makes."""
        if self.shortest_edge is None:
            return math.ceil(FAST_OVERSAMPLE * self.resize_width), math.ceil(FAST_OVERSAMPLE * self.resize_height)
        scale = math.ceil(FAST_OVERSAMPLE * self.shortest_edge) / min(width, height)
        return math.ceil(width * scale), math.ceil(height * scale)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB exactly as transformers' convert_to_rgb: transparency composited on white,
    everything else through Pillow's own conversion (so the device sees what the reference saw)."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# The most pixels an image may have, for every path that decodes a user's image (the server's requests, a
# caption folder, a fleet worker, verify's and calibrate's photos): a 20 KB PNG can declare 169 MP and
# take 1.7 GB to decode. The server's --max-megapixels sets its own.
MAX_IMAGE_PIXELS = 40_000_000


def open_image(
    source: Path | bytes,
    config: PreprocessConfig | None = None,
    fidelity: Fidelity = Fidelity.EXACT,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
    """An image as RGB. A file that cannot be decoded (a photo folder's broken or non-image file) or that
    has more than `max_pixels` is one InvalidImage naming it; bytes (a request's, a fleet worker's) raise
    Pillow's own errors, or ValueError for the size, for the caller to map."""
    if isinstance(source, bytes):
        return _decode(io.BytesIO(source), config, fidelity, max_pixels)
    try:
        return _decode(source, config, fidelity, max_pixels)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"{source}: not a readable image ({exc}); remove or replace it") from exc


def _decode(
    data: Path | io.BytesIO, config: PreprocessConfig | None, fidelity: Fidelity, max_pixels: int
) -> Image.Image:
    with Image.open(data) as image:
        width, height = image.size
        if width * height > max_pixels:  # checked from the header, before a byte of pixels is decoded
            raise ValueError(f"{width}x{height} is {width * height / 1e6:.0f} MP, more than {max_pixels / 1e6:g} MP")
        if config is not None and fidelity is Fidelity.FAST:
            draft(image, config)
        image.load()
        return to_rgb(image)


def draft(image: Image.Image, config: PreprocessConfig) -> None:
    """Before load(): a JPEG decodes at the smallest DCT scale whose short side stays at least
    FAST_OVERSAMPLE x the model's input (Pillow rounds the scale so both sides are at least the size asked)."""
    if image.format in ("JPEG", "MPO") and draft_applies(image.size, config):
        image.draft("RGB", config.draft_size(*image.size))


def draft_applies(size: tuple[int, int], config: PreprocessConfig) -> bool:
    """Whether a JPEG this size decodes reduced in Fidelity.FAST: 1/2 is the first scale there is."""
    if config.shortest_edge is not None:
        return min(size) >= 2 * math.ceil(FAST_OVERSAMPLE * config.shortest_edge)
    want = config.draft_size(*size)
    return size[0] >= 2 * want[0] and size[1] >= 2 * want[1]


def resized_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_short, new_long) if height <= width else (new_long, new_short)


# Past this many crops' length (a 64:1 aspect ratio: a resized image of at most 14336x224, under 10 MB),
# the long side is resized only where the center crop will keep it.
LONG_SIDE_CROPS = 64


def preprocess(image: Image.Image, config: PreprocessConfig, fidelity: Fidelity = Fidelity.EXACT) -> np.ndarray:
    """An RGB image -> float32 [1, 3, crop_height, crop_width]."""
    image = to_rgb(image)
    gap = FAST_REDUCING_GAP if fidelity is Fidelity.FAST else None
    height, width = config.resized(image.height, image.width)
    top = (height - config.crop_height) // 2
    left = (width - config.crop_width) // 2
    # A long thin image (6000x1 scales to 1,344,000x224) is resized only over the part the crop keeps, so
    # time and memory stay flat for any aspect ratio. Pillow's horizontal `box` samples the source where the
    # whole resize would; its vertical box does not, so a tall one is resized transposed (the two passes
    # then round in the other order: within a few levels of the exact result, past 64:1 only).
    tall = top > 0 and height > LONG_SIDE_CROPS * config.crop_height
    if tall:
        image, width, height, left, top = image.transpose(Image.Transpose.TRANSPOSE), height, width, top, left
    if left > 0 and width > LONG_SIDE_CROPS * (config.crop_height if tall else config.crop_width):
        crop = config.crop_height if tall else config.crop_width
        scale = image.width / width
        box = (left * scale, 0.0, (left + crop) * scale, float(image.height))
        array = np.asarray(image.resize((crop, height), resample=config.resample, box=box, reducing_gap=gap))
        left = 0
    else:
        array = np.asarray(image.resize((width, height), resample=config.resample, reducing_gap=gap))
    if tall:
        array, top, left = array.transpose(1, 0, 2), left, top
    array = _center_crop(array, top, left, config.crop_height, config.crop_width)
    # (x * rescale - mean) / std as one float32 multiply-add per pixel; within 1e-6 of the float64 path.
    # Channels first, then the arithmetic in place over each whole plane: broadcast over the last axis of 3,
    # numpy's inner loops run three elements at a time (1.02 ms against 0.08 for 224x224, same values).
    std = np.asarray(config.std, dtype=np.float64)
    gain = (config.rescale_factor / std).astype(np.float32)[:, None, None]
    offset = (np.asarray(config.mean, dtype=np.float64) / std).astype(np.float32)[:, None, None]
    planes = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)
    planes *= gain
    planes -= offset
    return planes[None]


def _center_crop(array: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """Crop, zero-padding first when the image is smaller than the crop (as transformers does)."""
    if top < 0 or left < 0:
        pad_top, pad_left = max(-top, 0), max(-left, 0)
        padded = np.zeros((max(array.shape[0], height), max(array.shape[1], width), 3), dtype=array.dtype)
        padded[pad_top : pad_top + array.shape[0], pad_left : pad_left + array.shape[1]] = array
        array, top, left = padded, max(top, 0), max(left, 0)
    return array[top : top + height, left : left + width]


def find_images(root: Path) -> list[Path]:
    """The image files below a folder (by extension, sorted): captions and lists beside them are not."""
    if root.is_file():
        return [root] if root.suffix.lower() in IMAGE_SUFFIXES else []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
