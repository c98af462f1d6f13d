"""What tests share besides fixtures: the repository's paths and the tiny-CLIP pipeline config."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import yaml

from common.hashing import sha256_text
from runtime.manifest import CURRENT_SET

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "data" / "images"


def device_set(models_dir: Path) -> Path:
    """The model set fetch switched to in a device's models dir (the link, not resolved)."""
    return models_dir / CURRENT_SET


STAGES = ["export", "verify", "calibrate", "compile", "embed-vocab", "fetch", "smoke-test"]


# clip-interrogator's long lists in the default vocabulary, cut to their first labels for the tests' builds:
# the same categories and settings, embedded in a second instead of a minute for each (README's preview
# test embeds them whole).
CUT_LISTS = {"artist": 30, "flavor": 150, "movement": 60}


def small_default_vocabulary() -> Path:
    """vocab/default.yaml with CUT_LISTS applied, in one place for every test (a config's vocabulary path
    is one of embed-vocab's settings: copies of the shared build must name the same file to be up to date);
    written only when its text changes, so its state stays the same too."""
    spec = yaml.safe_load((REPO / "vocab" / "default.yaml").read_text(encoding="utf-8"))
    for category in spec["categories"]:
        if "labels_file" not in category:
            continue
        file = REPO / "vocab" / category.pop("labels_file")
        if category["name"] in CUT_LISTS:
            labels = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
            category["labels"] = labels[: CUT_LISTS[category["name"]]]
        else:
            category["labels_file"] = str(file)
    text = yaml.safe_dump(spec, allow_unicode=True)
    path = Path(tempfile.gettempdir()) / "clip-axera-tests" / f"small-default-vocab-{sha256_text(text)[:12]}.yaml"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)  # whole or absent: another worker may write it at the same time
    return path


def tiny_config_dict(artifacts: Path) -> dict:
    """Every stage on this machine: tiny CLIP, onnxruntime compile, fetch to a local 'device' folder; the
    default vocabulary with clip-interrogator's lists cut short (small_default_vocabulary)."""
    return {
        "model": {"id": "builtin:tiny-clip"},
        "artifacts": str(artifacts),
        "hosts": {"local": {"kind": "local", "workdir": str(artifacts.parent / "device")}},
        "stages": {
            "export": {"opset": 14},
            "verify": {"images": str(IMAGES), "max_images": 2, "min_cosine": 0.99999, "max_abs_diff": 1e-4},
            "calibrate": {
                "images": str(IMAGES),
                "prompts": str(REPO / "data" / "calibration_prompts.txt"),
                "image_count": 4,
                "text_count": 8,
            },
            "compile": {"target": "onnxruntime", "data_type": "U16", "calibration_size": 8},
            "embed-vocab": {"vocabulary": str(small_default_vocabulary())},
            "smoke-test": {"runs": 3},
        },
    }


def build_every_stage(root: Path, model: str = "builtin:tiny-clip") -> Path:
    """Every stage of the tiny pipeline run on `model` in `root`; its artifacts folder."""
    from pipeline.graph import StageGraph
    from pipeline.runner import RunRequest, run
    from stages import ALL_STAGES
    from stages.config import load_config

    data = tiny_config_dict(root / "artifacts")
    data["model"]["id"] = model
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    outcomes = run(load_config(path), StageGraph(ALL_STAGES), RunRequest())
    assert [o.outcome.value for o in outcomes] == ["ran"] * len(STAGES), outcomes
    return root / "artifacts"


def interruptible(command: list[str], **options: object) -> subprocess.Popen:
    """A process a test will Ctrl+C (SIGINT). pytest-xdist's workers ignore SIGINT, and an ignored signal
    stays ignored across exec: Python would then never raise KeyboardInterrupt in the child. So the child
    is started while SIGINT has its default handler here."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, **options)  # type: ignore[call-overload]
    finally:
        signal.signal(signal.SIGINT, previous)


FAMILIES = {"clip": "builtin:tiny-clip", "siglip": "builtin:tiny-siglip", "chinese_clip": "builtin:tiny-chinese-clip"}
# The original SigLIP checkpoints' tokenizer: SentencePiece only, converted to tokenizer.json at export.
MODELS = {**FAMILIES, "siglip_sentencepiece": "builtin:tiny-siglip-sentencepiece"}


def transformers_reference(export: Path) -> tuple:
    """transformers' own model, tokenizer and image processor for the model export loaded."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    source = next((export.parent / "cache").rglob("config.json")).parent
    model = AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(source), AutoImageProcessor.from_pretrained(source)
