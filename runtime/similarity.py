"""Cosine similarity in float64: the one measure verify, compile and the smoke test report."""

from __future__ import annotations

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64) + 1e-300))
