"""A Dask worker preload for bench/fleet.py: the worker's image encoder becomes the NPU-class stand-in of
bench/caption.py, a wait of NPU_CLASS_MS milliseconds that holds no core (what an AX650 encode costs the
Pi's CPU). Decoding, preprocessing and ranking stay real. Loaded by the worker with `--preload <this file>`.
"""

from __future__ import annotations

import os
import time

import numpy as np

from runtime.clip import ClipRuntime


def dask_setup(worker: object) -> None:
    wait_s = float(os.environ["NPU_CLASS_MS"]) / 1e3

    def encode(self: ClipRuntime, pixels: np.ndarray) -> np.ndarray:
        time.sleep(wait_s)
        return np.random.default_rng(0).normal(size=self.info.projection_dim).astype(np.float32)

    ClipRuntime.encode_pixels = encode  # type: ignore[method-assign]
