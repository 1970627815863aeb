"""bf16 weights in the VNNI pair layout of the bf16 kernels (``csrc/nk_bf16.c``).

The precision pass stores a bf16 GEMM's weight as a bfloat16 slot (uint16 bit patterns, a
bake recipe ``cast``); the native engine packs that slot once, at bind time, and again after
every weight update (``PackSpec`` kinds registered here, see ``packing.py``):

* ``bf16_matmul`` — a product's right operand ``[K, N]`` (``[N, K]`` when ``trans``) as
  ``[ceil(N / NR)][KP / 2][NR][2]``: pairs of consecutive K interleaved per column, K
  zero-padded to ``KP`` (a multiple of :data:`KALIGN`). That is the layout of AMX's B tiles
  (16 pair-rows of 16 columns) and of the 16-column vectors VDPBF16PS multiplies, so one
  packed weight serves both kernel variants.
* ``bf16_conv`` — a convolution's ``[O, C/G, KH, KW]`` as per-group ``[panels][K2][MR][2]``
  with ``K2 = ceil(C/G / 2) * KH * KW`` pairs ordered (channel pair, ky, kx): each step of the
  kernel broadcasts the (channel 2c, channel 2c+1) weight pair of ``MR`` output channels.
* ``bf16_conv_cvec`` — a one-group convolution for the channel-vector kernel (small maps):
  the ``[K, O]`` matrix of its weights, K ordered (channel pair, ky, kx, channel in the pair),
  packed as ``bf16_matmul``; output channels fill the vectors.
* ``bf16_widen`` — the bf16 weight widened to float32 (the fp32 fallback on CPUs without bf16
  dot products: the same products, summed by the fp32 GEMM).

>>> import numpy as np
>>> w = np.arange(6, dtype=np.uint16).reshape(3, 2)  # K=3, N=2
>>> p = pack_bf16_matmul(w, trans=False).reshape(-1, KALIGN // 2, NR, 2)
>>> p[0, :2, :2].tolist()  # pair 0 = (k0, k1), pair 1 = (k2, padding)
[[[0, 2], [1, 3]], [[4, 0], [5, 0]]]
"""

from __future__ import annotations

import numpy as np

from nerve.engines.native.packing import MR, PACKERS, PackSpec
from nerve.ir.dtypes import bfloat16_to_float32

NR = 32  # NK_BF16_NR in nk.h: columns per packed tile
KALIGN = 32  # NK_BF16_KALIGN in nk.h: K padding (an AMX tile holds 32 bf16 of K)


def kpad(k: int) -> int:
    """K padded to a multiple of :data:`KALIGN`."""
    return -(-k // KALIGN) * KALIGN


def _aligned_uint16(size: int) -> np.ndarray:
    """Zeros starting on a cache line (AMX tile loads and vector loads never straddle two)."""
    raw = np.zeros(size + 32, np.uint16)
    skip = (-raw.ctypes.data % 64) // 2
    return raw[skip : skip + size]


def _target(out: np.ndarray | None, size: int) -> np.ndarray:
    if out is None or out.size != size or out.dtype != np.uint16:
        return _aligned_uint16(size)
    return out


def _bits(w: np.ndarray) -> np.ndarray:
    if w.dtype != np.uint16:
        raise ValueError(f"bf16 packing takes bfloat16 bit patterns (uint16), not {w.dtype}")
    return w


def bf16_matmul_packed_size(k: int, n: int) -> int:
    """uint16 elements of a ``K x N`` bf16 matrix packed as ``NR``-column pair tiles."""
    return -(-n // NR) * kpad(k) * NR


def pack_bf16_matmul(w: np.ndarray, trans: bool, out: np.ndarray | None = None) -> np.ndarray:
    """``w`` (bf16 bits, ``[K, N]`` or ``[N, K]`` when ``trans``) as ``[tiles][KP/2][NR][2]``.

    ``out``, a previous result for the same shape, is rewritten in place (a weight update).
    """
    b = _bits(np.asarray(w))
    if trans:
        b = b.T
    k, n = b.shape
    kp, tiles = kpad(k), -(-n // NR)
    out = _target(out, tiles * kp * NR)
    dst = out.reshape(tiles, kp // 2, NR, 2)
    padded = np.zeros((kp, tiles * NR), np.uint16)
    padded[:k, :n] = b
    # [KP, tiles*NR] -> [KP/2, 2, tiles, NR] -> [tiles, KP/2, NR, 2]
    dst[...] = padded.reshape(kp // 2, 2, tiles, NR).transpose(2, 0, 3, 1)
    return out


def bf16_conv_packed_size(shape: tuple[int, ...], groups: int) -> int:
    """uint16 elements of a conv weight of ``shape`` packed for ``groups`` groups."""
    o, cg, *kernel = shape
    taps = int(np.prod(kernel)) if kernel else 1
    panels = -(-(o // groups) // MR)
    return groups * panels * (-(-cg // 2)) * taps * MR * 2


def pack_bf16_conv(w: np.ndarray, groups: int, out: np.ndarray | None = None) -> np.ndarray:
    """``w`` (bf16 bits, ``[O, C/G, KH, KW]``) as per-group ``[panels][K2][MR][2]`` pairs."""
    w = _bits(np.asarray(w))
    o, cg = w.shape[:2]
    kh, kw = (1, 1, *w.shape[2:])[-2:]  # a 1-D convolution has KH = 1
    og, cp = o // groups, -(-cg // 2)
    panels = -(-og // MR)
    out = _target(out, bf16_conv_packed_size(tuple(w.shape), groups))
    full = np.zeros((groups, panels * MR, cp * 2, kh, kw), np.uint16)
    full[:, :og, :cg] = w.reshape(groups, og, cg, kh, kw)
    # [G, panels, MR, CP, 2, KH, KW] -> [G, panels, CP, KH, KW, MR, 2]
    arranged = full.reshape(groups, panels, MR, cp, 2, kh, kw).transpose(0, 1, 3, 5, 6, 2, 4)
    out.reshape(arranged.shape)[...] = arranged
    return out


def _cvec_matrix(w: np.ndarray) -> np.ndarray:
    """A convolution's ``[O, C, KH, KW]`` as the ``[K, O]`` right operand of a product, with K
    ordered (channel pair, ky, kx, channel in the pair)."""
    o, c = w.shape[:2]
    kh, kw = (1, 1, *w.shape[2:])[-2:]
    cp = -(-c // 2)
    full = np.zeros((o, cp * 2, kh, kw), np.uint16)
    full[:, :c] = w.reshape(o, c, kh, kw)
    return full.reshape(o, cp, 2, kh, kw).transpose(1, 3, 4, 2, 0).reshape(cp * kh * kw * 2, o)


def bf16_conv_cvec_packed_size(shape: tuple[int, ...]) -> int:
    """uint16 elements of a (one-group) conv weight packed for the channel-vector kernel."""
    o, c, *kernel = shape
    return bf16_matmul_packed_size(-(-c // 2) * 2 * int(np.prod(kernel or [1])), o)


def pack_bf16_conv_cvec(w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``w`` (bf16 bits, ``[O, C, KH, KW]``, one group) as the channel-vector kernel's tiles:
    ``[ceil(O / NR)][KP/2][NR][2]``, a product's B over K ordered (channel pair, ky, kx)."""
    return pack_bf16_matmul(_cvec_matrix(_bits(np.asarray(w))), trans=False, out=out)


def widen_bf16(w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """bf16 bits as float32 (exact), flat."""
    wide = bfloat16_to_float32(_bits(np.asarray(w))).reshape(-1)
    if out is not None and out.shape == wide.shape and out.dtype == np.float32:
        out[...] = wide
        return out
    return wide


def _pack(spec: PackSpec, array: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if spec.kind == "bf16_matmul":
        return pack_bf16_matmul(array, spec.trans, out)
    if spec.kind == "bf16_conv":
        return pack_bf16_conv(array, spec.groups, out)
    if spec.kind == "bf16_conv_cvec":
        return pack_bf16_conv_cvec(array, out)
    return widen_bf16(array, out)


for _kind in ("bf16_matmul", "bf16_conv", "bf16_conv_cvec", "bf16_widen"):
    PACKERS[_kind] = _pack


__all__ = [
    "KALIGN",
    "NR",
    "bf16_conv_cvec_packed_size",
    "bf16_conv_packed_size",
    "bf16_matmul_packed_size",
    "kpad",
    "pack_bf16_conv",
    "pack_bf16_conv_cvec",
    "pack_bf16_matmul",
    "widen_bf16",
]
