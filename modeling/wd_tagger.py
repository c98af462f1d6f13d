"""Tiny WD taggers with random weights, in the published interface (runtime/tagger.py): a folder of
`model.onnx` (NHWC BGR 0-255 in, sigmoid probabilities out) and `selected_tags.csv`, for the tests and the
built-in example, made with no network.

The backbones are the v3 taggers' three families as transformers builds them (`*ForImageClassification`:
ViT, ConvNeXt, SwinV2; timm cannot run beside this machine's CPU torch), in small configs at a small input
size, wrapped in the layer SmilingWolf's exports carry: channel order, scale and layout in, a sigmoid out.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

TINY_SIZE = 64  # the input side (the published models: 448)
RATINGS = ("general", "sensitive", "questionable", "explicit")
GENERAL = ("1girl", "solo", "long_hair", "smile", "outdoors", "sky", "cloud", "tree", "water", "boat", "cat", "^_^")
CHARACTERS = ("hatsune_miku", "hakurei_reimu", "kirisame_marisa")
SEED = 0


def tag_rows() -> list[tuple[int, str, int, int]]:
    """selected_tags.csv's rows: ratings (9) first, as in the published lists, then general (0), characters (4)."""
    named = [(name, 9) for name in RATINGS] + [(name, 0) for name in GENERAL] + [(name, 4) for name in CHARACTERS]
    return [(index, name, category, 1000 - index) for index, (name, category) in enumerate(named)]


def backbone(family: str, labels: int) -> Any:  # a transformers PreTrainedModel
    """A tiny `*ForImageClassification` of `family` (vit, convnext, swinv2), random weights."""
    import torch
    import transformers

    torch.manual_seed(SEED)
    if family == "vit":
        config = transformers.ViTConfig(
            image_size=TINY_SIZE, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, num_labels=labels,
        )  # fmt: skip
        return transformers.ViTForImageClassification(config)
    if family == "convnext":
        config = transformers.ConvNextConfig(
            num_channels=3, hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=labels
        )
        return transformers.ConvNextForImageClassification(config)
    if family == "swinv2":
        config = transformers.Swinv2Config(
            image_size=TINY_SIZE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
            num_labels=labels,
        )  # fmt: skip
        return transformers.Swinv2ForImageClassification(config)
    raise ValueError(f"unknown tagger family {family!r}: vit, convnext or swinv2")


def write_tiny_tagger(folder: Path, family: str = "vit") -> Path:
    """`folder` with model.onnx and selected_tags.csv of a tiny random tagger of `family`."""
    import torch

    rows = tag_rows()
    classifier = backbone(family, len(rows)).eval()

    class Published(torch.nn.Module):
        """The WD exports' interface around the backbone: BGR 0-255 NHWC in, probabilities out (the v3
        models normalize with mean 0.5 and std 0.5)."""

        def __init__(self) -> None:
            super().__init__()
            self.classifier = classifier

        def forward(self, bgr: torch.Tensor) -> torch.Tensor:
            rgb = bgr.flip(-1).permute(0, 3, 1, 2) / 255.0
            return torch.sigmoid(self.classifier(pixel_values=(rgb - 0.5) / 0.5).logits)

    folder.mkdir(parents=True, exist_ok=True)
    example = torch.rand(1, TINY_SIZE, TINY_SIZE, 3) * 255
    torch.onnx.export(
        Published().eval(),
        (example,),
        str(folder / "model.onnx"),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        opset_version=14,
        dynamo=False,
    )
    with (folder / "selected_tags.csv").open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["tag_id", "name", "category", "count"])
        out.writerows(rows)
    return folder
