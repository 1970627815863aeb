"""Host kernel families; importing this package registers every kernel."""

from nerve.engines.host.kernels import (  # noqa: F401
    elementwise,
    fused,
    linalg,
    nn,
    nn_norm,
    nn_pool,
    nn_resize,
    quant,
    reduce,
    tensor,
)
