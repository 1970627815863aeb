"""Cross-process zero-copy: a worker process owns programs, clients send runs over a socket.

Tensors never cross the control channel. A client names :class:`~nerve.SharedTensor` s
(POSIX shared memory) for a run's inputs and outputs; the worker maps them, reads the inputs
in place and writes the outputs in place; the channel carries only small JSON messages
(a run request is a few hundred bytes whatever the tensor sizes — ``Client.bytes_sent`` counts
them).

>>> import numpy as np, nerve                                   # doctest: +SKIP
>>> with nerve.Worker() as worker, worker.connect() as client:  # doctest: +SKIP
...     client.load("relu", "relu.onnx")
...     x = nerve.SharedTensor.from_array(np.ones((1, 8), np.float32))
...     y = client.run("relu", {"x": x})["y"]                   # y: a SharedTensor
...     y.array                                                 # zero-copy view

Protocol: ``multiprocessing.connection`` on an AF_UNIX socket (created in a private 0700
directory) with an HMAC handshake on ``authkey``; messages are JSON objects
``{"id", "op", ...}`` answered by ``{"id", "ok", ...}`` or ``{"id", "ok": false, "error"}``.
Ops: ``hello``, ``load``, ``programs``, ``run``, ``release``, ``stats``.

Safety rules the worker enforces:

* Every shared-memory reference is validated before use: the name (no slashes, bounded
  length), that the segment exists and carries a nerve header, and that the requested byte
  window lies inside the tensor's data, is aligned, and holds exactly the program's tensor (no
  access outside a region). A bad request gets an error reply; the worker goes on.
* While a run uses a tensor its header's busy count is raised; ``SharedTensor.write`` (in any
  process) refuses to write it until the run completes.
* A client that disconnects or dies mid-run costs nothing permanent: its queued jobs are
  cancelled, a running job finishes (its reply is dropped), then every mapping the client's
  session opened is closed. The worker never creates or unlinks client memory.

Modules: :mod:`.protocol` (wire format), :mod:`.server` and :mod:`.session` (the worker side),
:mod:`.client` and :mod:`.replies` (the client side), :mod:`.process` (the Worker handle).
"""

from nerve.runtime.worker.client import Client, connect
from nerve.runtime.worker.process import Worker
from nerve.runtime.worker.protocol import MAX_MESSAGE as MAX_MESSAGE
from nerve.runtime.worker.protocol import PROTOCOL as PROTOCOL
from nerve.runtime.worker.replies import RemoteJob
from nerve.runtime.worker.server import serve
from nerve.runtime.worker.session import MAX_ATTACHMENTS as MAX_ATTACHMENTS
from nerve.runtime.worker.session import MAX_PLANS as MAX_PLANS

__all__ = ["Client", "RemoteJob", "Worker", "connect", "serve"]
