"""A WD booru tagger (SmilingWolf's wd-*-tagger-v3: ViT, SwinV2, ConvNeXt, EVA02) on the device, through
the interface its author publishes and every tool that runs it follows (the wd-tagger Space's app.py,
kohya-ss sd-scripts' tag_images_by_wd14_tagger.py, toriato's A1111 extension):

- `model.onnx`: one image in, NHWC [1, size, size, 3], float32 BGR values 0-255; one output, a
  probability per tag (the sigmoid is in the graph: the tools above threshold its values as they come).
- `selected_tags.csv`: `tag_id,name,category,count`, one row per output, in output order; category 9 is
  a rating (general, sensitive, questionable, explicit), 0 a general tag, 4 a character.
- The image: composited on white, padded to a square on white (centred), resized to `size` with
  Pillow's bicubic filter (the Space's prepare_image), then RGB to BGR.

The model comes onto the NPU when a request first needs it and leaves it when idle, as the text encoder
does (runtime.npu.ResidentModel), and runs under the same NPU lock as the CLIP encoders.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.contract import JsonFile
from common.errors import ModelFilesError
from runtime.backends import open_backend
from runtime.manifest import model_set
from runtime.npu import NpuLock, ResidentModel
from runtime.preprocess import to_rgb

TAGS_FILE = "selected_tags.csv"
TAGGER_DIR = "tagger"  # a fetched model set's tagger, beside the CLIP encoders
MODEL_FILES = ("model.axmodel", "model.onnx")  # the compiled model first, else the published float one
TAGS_HEADER = ["tag_id", "name", "category", "count"]
RATING, GENERAL, CHARACTER = 9, 0, 4  # selected_tags.csv's categories
UNLOAD_AFTER_S = 60.0  # the tagger leaves the NPU after this idle time (the CLIP encoder stays)


@dataclass(frozen=True)
class TagList:
    """selected_tags.csv: each output's tag name and category."""

    names: tuple[str, ...]
    categories: np.ndarray  # int, one per output

    @classmethod
    def read(cls, path: Path) -> TagList:
        try:
            with path.open(encoding="utf-8", newline="") as handle:
                rows = list(csv.reader(handle))
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelFilesError(f"{path}: cannot be read ({exc})") from exc
        if not rows or [cell.strip() for cell in rows[0]] != TAGS_HEADER:
            raise ModelFilesError(f"{path}: the first line must be {','.join(TAGS_HEADER)} (a WD tagger's tag list)")
        names, categories = [], []
        for number, row in enumerate(rows[1:], start=2):
            if len(row) != len(TAGS_HEADER) or not row[2].strip().lstrip("-").isdigit() or not row[1]:
                raise ModelFilesError(f"{path}, line {number}: expected tag_id,name,category,count, got {row!r}")
            names.append(row[1])
            categories.append(int(row[2]))
        return cls(tuple(names), np.array(categories, dtype=np.int64))

    def of(self, category: int) -> np.ndarray:
        return np.flatnonzero(self.categories == category)

    def answer(self, probabilities: np.ndarray, thresholds: TagThresholds) -> TagAnswer:
        """Every rating; general and character tags at or above their bars, best first."""
        return TagAnswer(
            ratings={self.names[row]: float(probabilities[row]) for row in self.of(RATING).tolist()},
            general=self._named(probabilities, self._above(probabilities, GENERAL, thresholds.general)),
            character=self._named(probabilities, self._above(probabilities, CHARACTER, thresholds.character)),
        )

    def _above(self, probabilities: np.ndarray, category: int, bar: float) -> np.ndarray:
        rows = self.of(category)
        return rows[probabilities[rows] >= bar]

    def _named(self, probabilities: np.ndarray, rows: np.ndarray) -> dict[str, float]:
        order = rows[np.argsort(-probabilities[rows], kind="stable")]
        return {self.names[row]: float(probabilities[row]) for row in order.tolist()}


@dataclass(frozen=True)
class TagThresholds:
    """The probabilities a general tag and a character tag must reach (the WD taggers' customary bars)."""

    general: float = 0.35
    character: float = 0.85


@dataclass(frozen=True)
class TaggerInfo(JsonFile, file="tagger.json", made_by="invoke tagger-export"):
    """What tagger-export read of the published tagger, beside the static model.onnx it made: the device
    and every later stage read the tagger's facts from here."""

    name: str  # what /tagger/v1/interrogators lists
    source: str  # the tagger's id: a Hugging Face id, a folder, a built-in one
    revision: str
    published_sha256: str  # of the published model.onnx the static one was made from
    opset: int
    size: int  # the image side
    tags: int
    input: str
    output: str


@dataclass(frozen=True)
class TagAnswer:
    """One image's tags, each category best first."""

    ratings: dict[str, float]  # every rating, whatever its probability, in the list's order (as the extension)
    general: dict[str, float]
    character: dict[str, float]

    @property
    def tags(self) -> dict[str, float]:
        """General and character tags together, best first (what the extension and A1111 answer with)."""
        return dict(sorted({**self.general, **self.character}.items(), key=lambda item: -item[1]))


def fetched_tagger(models_dir: Path) -> Path | None:
    """The tagger folder of the model set in `models_dir` (what fetch put there with a `tagger:`), if any."""
    folder = model_set(models_dir) / TAGGER_DIR
    return folder if folder.is_dir() else None


def required_tagger(models_dir: Path) -> Path:
    """fetched_tagger, where a tagger is asked for (`invoke caption --tagger`, here or on a fleet's device)."""
    folder = fetched_tagger(models_dir)
    if folder is None:
        raise ModelFilesError(
            f"the models in {models_dir} hold no tagger",
            hint="add `tagger: {id: ...}` to pipeline.yaml and run `invoke all` (it fetches it; README: Booru tags)",
        )
    return folder


def model_file(folder: Path) -> Path:
    """A tagger folder's model: the compiled one first, else the published float one."""
    model = next((folder / name for name in MODEL_FILES if (folder / name).is_file()), None)
    if model is None:
        raise ModelFilesError(f"{folder}: no {' or '.join(MODEL_FILES)} (a WD tagger's folder holds model.onnx)")
    return model


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """The tagger's input from an image, as the wd-tagger Space prepares it: on white, padded to a centred
    square on white, resized to `size` (bicubic), BGR 0-255, NHWC [1, size, size, 3]. As uint8: Pillow's
    values exactly, what a compiled tagger takes (Pulsar2 `src_dtype: U8`); the float model's backend casts
    them to its float32 input (backends.conform)."""
    image = to_rgb(image)  # transparency composited on white, as the Space's RGBA canvas does
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(square, dtype=np.uint8)[None, :, :, ::-1])


class Tagger:
    """A tagger's folder (model.onnx or model.axmodel beside selected_tags.csv), opened for tagging."""

    def __init__(self, folder: Path, npu: NpuLock, unload_after: float | None = UNLOAD_AFTER_S) -> None:
        model = model_file(folder)
        self.folder, self.npu, self.file = folder, npu, model.name
        # What /tagger/v1/interrogators lists and requests name: the pipeline's name for it, else the folder's.
        self.name = TaggerInfo.read(folder).name if (folder / TaggerInfo.FILE).is_file() else folder.resolve().name
        self.tags = TagList.read(folder / TAGS_FILE)
        self.model = ResidentModel(lambda: open_backend(model), npu, unload_after)
        with npu.hold():
            self.input = self.model.get().inputs
        shape = list(self.input[0].shape) if len(self.input) == 1 else []
        if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or shape[1] < 1:
            raise ModelFilesError(
                f"{folder / self.file}: expected one NHWC image input [1, size, size, 3], got "
                f"{[list(i.shape) for i in self.input]}"
            )
        self.size = int(shape[1])

    def pixels(self, image: Image.Image) -> np.ndarray:
        return prepare_image(image, self.size)

    def probabilities(self, pixels: np.ndarray, wait: float | None = None) -> np.ndarray:
        """Every tag's probability for the prepared image (the NPU held only for the run; `wait` bounds
        the wait for it: NpuBusy past it)."""
        with self.npu.hold(wait):
            outputs = self.model.get().run({self.input[0].name: pixels})
        probabilities = np.asarray(next(iter(outputs.values())), dtype=np.float32).reshape(-1)
        if len(probabilities) != len(self.tags.names):
            raise ModelFilesError(
                f"{self.folder / self.file} gives {len(probabilities)} outputs but {TAGS_FILE} names "
                f"{len(self.tags.names)} tags: the two files are not of one tagger"
            )
        return probabilities
