"""The NPU-class stand-in of bench/caption.py in another process: the image encoder becomes a wait of
NPU_CLASS_MS milliseconds that holds no core (what an AX650 encode costs the Pi's CPU); decoding,
preprocessing and ranking stay real. As a Dask worker preload for bench/fleet.py (`--preload <this file>`),
and as the server for bench/service.py (`python bench/npu_class_worker.py <runtime.server's arguments>`).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from runtime.clip import ClipRuntime


def become_npu_class() -> None:
    wait_s = float(os.environ["NPU_CLASS_MS"]) / 1e3

    def encode(self: ClipRuntime, pixels: np.ndarray) -> np.ndarray:
        time.sleep(wait_s)
        return np.random.default_rng(0).normal(size=self.info.projection_dim).astype(np.float32)

    ClipRuntime.encode_pixels = encode  # type: ignore[method-assign]


def dask_setup(worker: object) -> None:
    become_npu_class()


if __name__ == "__main__":
    from runtime.server.__main__ import main

    become_npu_class()
    sys.exit(main(sys.argv[1:]))
