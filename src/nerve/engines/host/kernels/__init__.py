"""Host kernel families; importing this package registers every kernel."""

from nerve.engines.host.kernels import (  # noqa: F401
    elementwise,
    linalg,
    nn,
    reduce,
    tensor,
)
