"""The control channel's wire format, shared by the worker and its clients.

Messages are JSON objects ``{"id", "op", ...}`` answered by ``{"id", "ok", ...}`` or
``{"id", "ok": false, "error": {"type", "message"}}``, each sent as one
``multiprocessing.connection`` message (a 4-byte length prefix, then the payload). After the
handshake both ends speak through a :class:`Channel`, which frames the same bytes with one
system call per message where ``Connection.recv_bytes`` needs two.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from nerve.errors import NerveError, WorkerError

if TYPE_CHECKING:
    from nerve.runtime.program import Program, TensorInfo

MAX_MESSAGE = 1 << 20  # control messages are small; anything bigger is refused
PROTOCOL = 1
_LENGTH = struct.Struct("!i")  # the length prefix multiprocessing.connection sends
_LENGTH_PREFIX = _LENGTH.size
_READ_SIZE = 1 << 16  # one read takes a whole small message (and any that follow it)
# Built once: json.dumps with options builds a new encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)
_DECODER = json.JSONDecoder()


def encode(message: Any) -> bytes:
    """``message`` (a JSON-able value) as compact JSON bytes."""
    return _ENCODER.encode(message).encode()


def decode(data: bytes) -> Any:
    """The JSON value of ``data`` (raises ValueError when it is not UTF-8 JSON)."""
    return _DECODER.decode(data.decode())


class Channel:
    """Framed messages on a connected stream socket, in ``multiprocessing.connection``'s wire
    format, with one read per message where ``Connection.recv_bytes`` makes two (the length,
    then the payload) and one write per message.

    Reads are buffered: a read may bring several messages, so a caller that polls the socket
    must first ask :meth:`has_message`. One thread reads at a time and one writes at a time
    (callers hold their locks); ``conn`` stays the owner of the file descriptor.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._fd = conn.fileno()
        self._buffer = b""

    def has_message(self) -> bool:
        """Whether a whole message is already buffered (recv would not read the socket)."""
        buffer = self._buffer
        if len(buffer) < _LENGTH_PREFIX:
            return False
        return len(buffer) >= _LENGTH_PREFIX + _LENGTH.unpack_from(buffer)[0]

    def recv(self, maxsize: int) -> bytes:
        """The next message's payload. Raises EOFError when the peer hung up between
        messages, OSError when it hung up inside one or announced more than ``maxsize``
        bytes (the stream cannot be resynchronised then: close it)."""
        buffer = self._buffer
        while True:
            if len(buffer) >= _LENGTH_PREFIX:
                size = _LENGTH.unpack_from(buffer)[0]
                if not 0 <= size <= maxsize:  # -1 announces a > 2 GiB message
                    raise OSError(f"bad message length {size} (at most {maxsize} bytes)")
                end = _LENGTH_PREFIX + size
                if len(buffer) >= end:
                    self._buffer = buffer[end:]
                    return buffer[_LENGTH_PREFIX:end]
                wanted = end - len(buffer)
            else:
                wanted = _LENGTH_PREFIX - len(buffer)
            chunk = os.read(self._fd, max(_READ_SIZE, wanted))
            if not chunk:
                self._buffer = b""
                if buffer:
                    raise OSError("the peer hung up in the middle of a message")
                raise EOFError("the peer hung up")
            buffer = buffer + chunk if buffer else chunk

    def send(self, data: bytes) -> int:
        """Send ``data`` as one message; returns the bytes it took on the channel."""
        frame = _LENGTH.pack(len(data)) + data
        view = memoryview(frame)
        sent = os.write(self._fd, view)
        while sent < len(frame):  # a large message may take several writes
            sent += os.write(self._fd, view[sent:])
        return len(frame)


def run_reply(msg_id: Any, versions: Mapping[str, int], queue_us: float, run_us: float,
              energy_j: float | None, worker_us: float) -> bytes:
    """The reply to a run that succeeded: ``{"id", "ok": true, "status": "done", "versions",
    "queue_us", "run_us", "energy_j", "worker_us"}``, formatted directly (it is sent after
    every run), times to 0.01 µs. ``versions`` maps shared tensor names, which ``check_name``
    restricted to characters JSON needs no escape for."""
    times = (queue_us, run_us, worker_us)
    if type(msg_id) is not int or not all(map(math.isfinite, times)):
        return encode({"id": msg_id, "ok": True, "status": "done", "versions": versions,
                       "queue_us": queue_us, "run_us": run_us, "energy_j": energy_j,
                       "worker_us": worker_us})
    written = ",".join([f'"{name}":{int(version)}' for name, version in versions.items()])
    energy = repr(float(energy_j)) if energy_j is not None and math.isfinite(energy_j) \
        else encode(energy_j).decode()
    return (f'{{"id":{msg_id},"ok":true,"status":"done","versions":{{{written}}},'
            f'"queue_us":{queue_us:.2f},"run_us":{run_us:.2f},"energy_j":{energy},'
            f'"worker_us":{worker_us:.2f}}}').encode()


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
