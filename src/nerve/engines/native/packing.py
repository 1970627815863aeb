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

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MR = 8  # NK_MR in nk.h
NR = 48  # NK_NR in nk.h
CV_NB = 64  # NK_CV_NB in nk.h: output channels per block of the channel-vector conv kernel


@dataclass(frozen=True)
class PackSpec:
    """How a packed slot derives from a weight: ``kind`` and its arguments."""

    source: str
    kind: str  # "conv", "conv_cvec", "matmul" or "quad" (int8)
    groups: int = 1
    trans: bool = False  # matmul: the weight is stored [N, K] (Gemm transB)

    def pack(self, array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The packed form of ``array`` (the source weight's current value).

        With ``out`` (the slot's previous packed array, same source shape) the panels are
        rewritten in place: no allocation, one pass — what a weight update wants.
        """
        if self.kind == "conv":
            return pack_conv(array, self.groups, out)
        if self.kind == "conv_cvec":
            return pack_conv_cvec(array, out)
        if self.kind == "matmul":
            return pack_matmul(array, self.trans, out)
        packer = PACKERS.get(self.kind)
        if packer is not None:
            return packer(self, array, out)
        raise ValueError(f"unknown packing {self.kind!r}")


# Packings other modules add (the bf16 / int8 kernels' layouts), registered when they are
# imported: kind -> function(spec, source array, previous packed array or None).
PACKERS: dict[str, Callable[[PackSpec, np.ndarray, np.ndarray | None], np.ndarray]] = {}


def repack_natively(
    library: ctypes.CDLL, spec: PackSpec, array: np.ndarray, out: np.ndarray, threads: int = 1
) -> bool:
    """Re-pack ``array`` into ``out`` (its previous packed form) with the kernel library's C
    packers on ``threads`` threads, so that a weight update's second write costs about a
    memcpy (numpy's strided copies cost two to five). False when this packing has no C
    packer (the caller packs with numpy).
    """
    if array.dtype != np.float32 or not array.flags.c_contiguous or out.dtype != np.float32:
        return False
    shape = array.shape
    k = int(np.prod(shape[1:]))
    args: tuple[int, ...]
    if spec.kind == "matmul" and not spec.trans and array.ndim == 2:
        fn, args, size = library.nk_pack_matmul, shape, matmul_packed_size(*shape)
    elif spec.kind == "conv" and array.ndim >= 2:
        groups = spec.groups
        fn, args = library.nk_pack_conv, (groups, shape[0] // groups, k)
        size = conv_packed_size(shape, groups)
    elif spec.kind == "conv_cvec" and array.ndim >= 2:
        fn, args, size = library.nk_pack_conv_cvec, (shape[0], k), conv_cvec_packed_size(shape)
    else:
        return False
    if out.size != size:
        return False
    fn.restype = None
    fn(ctypes.c_int(max(1, threads)), *(ctypes.c_int64(a) for a in args),
       ctypes.c_void_p(array.ctypes.data), ctypes.c_void_p(out.ctypes.data))
    return True


def conv_packed_size(shape: tuple[int, ...], groups: int) -> int:
    """Floats of a conv weight of ``shape`` packed for ``groups`` groups."""
    o = shape[0]
    k = int(np.prod(shape[1:]))
    og = o // groups
    return groups * (-(-og // MR)) * MR * k


def pack_conv(w: np.ndarray, groups: int, out: np.ndarray | None = None) -> np.ndarray:
    """``w`` ``[O, C/G, *kernel]`` as per-group ``[panels][K][MR]`` panels, flat float32.

    ``out``, when given, must be a previous result for a weight of the same shape: its
    panels are overwritten in place (its zero padding rows stay zero).
    """
    w = np.asarray(w, np.float32)
    o = w.shape[0]
    og = o // groups
    k = int(np.prod(w.shape[1:]))
    panels = -(-og // MR)
    size = groups * panels * MR * k
    if out is None or out.size != size or out.dtype != np.float32:
        out = np.zeros(size, np.float32)
    dst = out.reshape(groups, panels, k, MR)
    src = w.reshape(groups, og, k)
    full = og // MR
    # Full panels: [G, full, MR, K] -> [G, full, K, MR] in one strided copy.
    dst[:, :full] = src[:, : full * MR].reshape(groups, full, MR, k).transpose(0, 1, 3, 2)
    rest = og - full * MR
    if rest:  # the last, partial panel: rows beyond og stay zero
        dst[:, full, :, :rest] = src[:, full * MR :].transpose(0, 2, 1)
    return out


def conv_cvec_packed_size(shape: tuple[int, ...]) -> int:
    """Floats of a conv weight of ``shape`` (one group) packed for the channel-vector kernel."""
    return -(-shape[0] // CV_NB) * CV_NB * int(np.prod(shape[1:]))


def pack_conv_cvec(w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``w`` ``[O, C, *kernel]`` (one group) as ``[blocks][K][CV_NB]``: each K step of a block
    is the weights of ``CV_NB`` consecutive output channels (``nk_conv2d_cvec`` loads them as
    four vectors). Channels past O are zero. ``out`` as for :func:`pack_conv`.

    >>> w = np.arange(2 * 3, dtype=np.float32).reshape(2, 3, 1, 1)
    >>> pack_conv_cvec(w).reshape(3, CV_NB)[:, :3]
    array([[0., 3., 0.],
           [1., 4., 0.],
           [2., 5., 0.]], dtype=float32)
    """
    w = np.asarray(w, np.float32)
    o = w.shape[0]
    k = int(np.prod(w.shape[1:]))
    blocks = -(-o // CV_NB)
    size = blocks * CV_NB * k
    if out is None or out.size != size or out.dtype != np.float32:
        out = _aligned_zeros(size)
    dst = out.reshape(blocks, k, CV_NB)
    src = w.reshape(o, k)
    full = o // CV_NB
    dst[:full] = src[: full * CV_NB].reshape(full, CV_NB, k).transpose(0, 2, 1)
    if o > full * CV_NB:  # the last, partial block: channels past O stay zero
        dst[full, :, : o - full * CV_NB] = src[full * CV_NB :].T
    return out


def _aligned_zeros(size: int) -> np.ndarray:
    """Zeros starting on a cache line, so that no tile row straddles two."""
    raw = np.zeros(size + 16, np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    return raw[skip : skip + size]


def matmul_packed_size(k: int, n: int) -> int:
    """Floats of a ``K x N`` matrix packed as ``NR``-column tiles."""
    return -(-n // NR) * k * NR


def pack_matmul(w: np.ndarray, trans: bool, out: np.ndarray | None = None) -> np.ndarray:
    """The right operand ``w`` (``[K, N]``, or ``[N, K]`` when ``trans``) of a product as
    ``[tiles][K][NR]`` column tiles, flat float32; the last tile's columns past N are zero.

    ``out``, when given, must be a previous result for a weight of the same shape: it is
    overwritten in place (its zero columns stay zero).
    """
    b = np.asarray(w, np.float32)
    if trans:
        b = b.T
    k, n = b.shape
    tiles = -(-n // NR)
    size = tiles * k * NR
    if out is None or out.size != size or out.dtype != np.float32:
        out = _aligned_zeros(size)
    dst = out.reshape(tiles, k, NR)
    full = n // NR
    dst[:full] = b[:, : full * NR].reshape(k, full, NR).transpose(1, 0, 2)
    if n > full * NR:
        dst[full, :, : n - full * NR] = b[:, full * NR :]
    return out


__all__ = [
    "MR",
    "NR",
    "PackSpec",
    "conv_cvec_packed_size",
    "conv_packed_size",
    "matmul_packed_size",
    "pack_conv",
    "pack_conv_cvec",
    "pack_matmul",
    "repack_natively",
]
