"""Tensor types: an element type and a static shape.

nerve compiles static shapes only; symbolic dimensions are bound by the frontend.

>>> from nerve.ir import TensorType, DType
>>> t = TensorType(DType.FLOAT32, (1, 3, 224, 224))
>>> t.numel, t.nbytes, str(t)
(150528, 602112, 'float32[1,3,224,224]')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nerve.ir.dtypes import DType


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.shape, tuple):
            object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def __str__(self) -> str:
        return f"{self.dtype.value}[{','.join(str(d) for d in self.shape)}]"
