"""Seeded random weights for the built-in models."""

from __future__ import annotations

import numpy as np


def normal(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """float32 samples of N(0, scale^2)."""
    return (rng.standard_normal(shape) * scale).astype(np.float32)
