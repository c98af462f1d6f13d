"""verify's golden data: inputs and the float encoders' outputs for them, the yardstick of every later model.

The folder `golden/` holds one `.npy` per tensor (inputs by the model's input name, references by its
output name, a row a sample) and golden.json, which says for each reference which model made it from
which input, and what each row is. compile measures the quantized models on it, fetch carries it to the
device, the smoke test measures the compiled models there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.contract import JsonFile
from common.errors import ModelFilesError

GOLDEN_DIR = "golden"


@dataclass(frozen=True)
class Reference:
    model: str  # export's file of the float model
    input: str  # the input tensor's name (its .npy beside this file)
    labels: tuple[str, ...]  # what each row is: an image file or a prompt


@dataclass(frozen=True)
class GoldenSet(JsonFile, file="golden.json", made_by="invoke verify"):
    references: dict[str, Reference]  # by the model's output name

    @staticmethod
    def write_arrays(directory: Path, arrays: dict[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            np.save(Path(directory) / f"{name}.npy", array)

    def pair(self, directory: Path, output: str) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, float reference) for the model whose output is named `output`, a row a sample."""
        if output not in self.references:
            raise ModelFilesError(f"{directory}: the golden data hold no {output}: run `{self.MADE_BY}`")
        reference = self.references[output]
        inputs = np.load(Path(directory) / f"{reference.input}.npy")
        outputs = np.load(Path(directory) / f"{output}.npy")
        if len(inputs) != len(outputs) or len(outputs) != len(reference.labels):
            raise ModelFilesError(
                f"{directory}: the golden {reference.input} and {output} differ in rows: run `{self.MADE_BY}`"
            )
        return inputs, outputs
