"""WD taggers with random weights, in the published interface (runtime/tagger.py): a folder of `model.onnx`
(NHWC BGR 0-255 in, sigmoid probabilities out) and `selected_tags.csv`, made with no network: tiny ones for
the tests, and base-size ones for the operator-table check of real-size graphs.

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
# The head's random weights scaled up: at their initial scale every probability is 0.5 +- 0.03, so every tag
# sits at A1111's 0.5 bar and any rounding flips it; real taggers are sure of most tags (near 0 or 1).
HEAD_GAIN = 30.0


def tag_rows(count: int = 0) -> list[tuple[int, str, int, int]]:
    """selected_tags.csv's rows: ratings (9) first, as in the published lists, then general (0), characters
    (4); `count` pads the general tags with made-up names to that many rows in all."""
    general = GENERAL + tuple(f"tag_{index}" for index in range(max(count - 4 - len(GENERAL) - len(CHARACTERS), 0)))
    named = [(name, 9) for name in RATINGS] + [(name, 0) for name in general] + [(name, 4) for name in CHARACTERS]
    return [(index, name, category, 1000 - index) for index, (name, category) in enumerate(named)]


# The v3 taggers' backbones at their published input side (their model cards: ViT-B/16, ConvNeXt-B, SwinV2-B
# at 448), for the operator-table check of real-size graphs; random weights, as the tests' tiny ones.
BASE_SIZE = 448
BASE_TAGS = 10_861


def backbone(family: str, labels: int, base: bool = False) -> Any:  # a transformers PreTrainedModel
    """A `*ForImageClassification` of `family` (vit, convnext, swinv2), tiny or at base size, random weights."""
    import torch
    import transformers

    torch.manual_seed(SEED)
    size = BASE_SIZE if base else TINY_SIZE
    if family == "vit":
        shape = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
        tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
        config = transformers.ViTConfig(image_size=size, patch_size=16, num_labels=labels, **(shape if base else tiny))
        return transformers.ViTForImageClassification(config)
    if family == "convnext":
        shape = {"hidden_sizes": [128, 256, 512, 1024], "depths": [3, 3, 27, 3]}
        tiny = {"hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2}
        config = transformers.ConvNextConfig(num_labels=labels, **(shape if base else tiny))
        return transformers.ConvNextForImageClassification(config)
    if family == "swinv2":
        shape = {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32], "window_size": 14}
        tiny = {"embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2], "window_size": 4}
        config = transformers.Swinv2Config(
            image_size=size, patch_size=4, num_labels=labels, **(shape if base else tiny)
        )
        return transformers.Swinv2ForImageClassification(config)
    raise ValueError(f"unknown tagger family {family!r}: vit, convnext or swinv2")


def write_random_tagger(folder: Path, family: str = "vit", base: bool = False) -> Path:
    """`folder` with model.onnx and selected_tags.csv of a random tagger of `family`: tiny, or with `base`
    the published backbone's shape at 448 and 10,861 outputs."""
    import torch

    rows = tag_rows(BASE_TAGS if base else 0)
    classifier = backbone(family, len(rows), base).eval()
    with torch.no_grad():
        classifier.classifier.weight.mul_(HEAD_GAIN)

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
    size = BASE_SIZE if base else TINY_SIZE
    example = torch.rand(1, size, size, 3) * 255
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
