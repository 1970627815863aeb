"""The control channel's wire format, shared by the worker and its clients.

Messages are JSON objects ``{"id", "op", ...}`` answered by ``{"id", "ok", ...}`` or
``{"id", "ok": false, "error": {"type", "message"}}``, each sent as one
``multiprocessing.connection`` message (a 4-byte length prefix, then the payload).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nerve.errors import NerveError, WorkerError

if TYPE_CHECKING:
    from nerve.runtime.program import Program, TensorInfo

MAX_MESSAGE = 1 << 20  # control messages are small; anything bigger is refused
PROTOCOL = 1
_LENGTH_PREFIX = 4  # bytes multiprocessing.connection sends before each message


def encode(message: Mapping[str, Any]) -> bytes:
    """``message`` as compact JSON bytes."""
    return json.dumps(message, separators=(",", ":")).encode()


def wire_size(data: bytes) -> int:
    """Bytes a message of payload ``data`` occupies on the channel."""
    return len(data) + _LENGTH_PREFIX


def error_reply(msg_id: Any, exc: BaseException) -> dict[str, Any]:
    """The reply that reports ``exc`` as the outcome of request ``msg_id``."""
    return {"id": msg_id, "ok": False,
            "error": {"type": type(exc).__name__, "message": str(exc)}}


def remote_error(reply: Mapping[str, Any]) -> NerveError:
    """The worker's error as the same nerve error class here (WorkerError if unknown)."""
    import nerve.errors as errors_module

    info = reply.get("error") or {}
    name, message = str(info.get("type", "WorkerError")), str(info.get("message", ""))
    cls = getattr(errors_module, name, None)
    if isinstance(cls, type) and issubclass(cls, NerveError):
        # Some classes take structured arguments; bypass their __init__, keep the message.
        error: NerveError = cls.__new__(cls)
        Exception.__init__(error, message)
        return error
    return WorkerError(f"worker: {name}: {message}")


def describe(program: Program, batch: bool) -> dict[str, Any]:
    """What clients learn about a loaded program: its inputs, outputs, target and batching."""

    def infos(items: Sequence[TensorInfo]) -> list[dict[str, Any]]:
        return [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in items]

    return {"inputs": infos(program.inputs), "outputs": infos(program.outputs),
            "target": program.target, "batch": batch}
