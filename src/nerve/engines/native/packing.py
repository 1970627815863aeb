"""Weights packed into the panel layout of the packed-GEMM micro-kernel (``csrc/nk_packed.c``).

A convolution's weights ``[O, C/G, KH, KW]`` become, per group, ``ceil(O/G / MR)`` panels of
``[K][MR]`` (``K = C/G * KH * KW``; the last panel zero-padded), so the micro-kernel
broadcasts ``MR`` consecutive floats per step and never re-packs the weights at run time.

Packing is a pure function of the weight array. The native executable packs when it binds a
weight slot and packs again whenever the run's environment holds a different array for the
source weight (a weight update, or a baked slot the runtime recomputed), so packed weights
always derive from the current weights. It lives in the engine rather than in a bake recipe
because the packed array is not an ONNX-typed Conv weight: the host engine, which runs the
same Plan when no C compiler exists, must keep seeing ``[O, C/G, KH, KW]``.

>>> import numpy as np
>>> w = np.arange(2 * 3, dtype=np.float32).reshape(2, 3, 1, 1)
>>> pack_conv(w, groups=1).reshape(3, MR)[:, :3]  # K-major, rows 2..7 zero-padded
array([[0., 3., 0.],
       [1., 4., 0.],
       [2., 5., 0.]], dtype=float32)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MR = 8  # NK_MR in nk.h
NR = 48  # NK_NR in nk.h


@dataclass(frozen=True)
class PackSpec:
    """How a packed slot derives from a weight: ``kind`` and its arguments."""

    source: str
    kind: str  # "conv"
    groups: int = 1

    def pack(self, array: np.ndarray) -> np.ndarray:
        """The packed form of ``array`` (the source weight's current value)."""
        if self.kind == "conv":
            return pack_conv(array, self.groups)
        raise ValueError(f"unknown packing {self.kind!r}")


def conv_packed_size(shape: tuple[int, ...], groups: int) -> int:
    """Floats of a conv weight of ``shape`` packed for ``groups`` groups."""
    o = shape[0]
    k = int(np.prod(shape[1:]))
    og = o // groups
    return groups * (-(-og // MR)) * MR * k


def pack_conv(w: np.ndarray, groups: int) -> np.ndarray:
    """``w`` ``[O, C/G, *kernel]`` as per-group ``[panels][K][MR]`` panels, flat float32."""
    w = np.asarray(w, np.float32)
    o = w.shape[0]
    og = o // groups
    k = int(np.prod(w.shape[1:]))
    panels = -(-og // MR)
    out = np.zeros((groups, panels * MR, k), np.float32)
    out[:, :og, :] = w.reshape(groups, og, k)
    # [G, panels, MR, K] -> [G, panels, K, MR]
    packed = out.reshape(groups, panels, MR, k).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(packed).reshape(-1)


__all__ = ["MR", "NR", "PackSpec", "conv_packed_size", "pack_conv"]
