"""The client side: :class:`Client` (a connection to a worker) and :func:`connect`.

Tensors never cross the channel: inputs and outputs are SharedTensors the client names in a run
request; numpy inputs are first staged into client-owned SharedTensors, reused under the
lifetime rule (never while referenced).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Client as _connect
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from nerve.errors import JobTimeoutError, SharedTensorError, WorkerError
from nerve.ir import DType
from nerve.runtime.tensors import SharedTensor, outside_references
from nerve.runtime.worker.protocol import (
    MAX_MESSAGE,
    Channel,
    decode,
    encode,
    remote_error,
    wire_size,
)
from nerve.runtime.worker.replies import PendingReply, RemoteJob

log = logging.getLogger("nerve")


class SharedPool:
    """Client-side SharedTensors reused under the lifetime rule (never while referenced)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, limit: int = 4) -> None:
        self.shape, self.dtype, self.limit = shape, dtype, limit
        self.tensors: list[SharedTensor] = []

    def acquire(self) -> SharedTensor:
        held = outside_references(self.tensors)
        data_held = outside_references([t._data for t in self.tensors])
        for t, others, data_others in zip(self.tensors, held, data_held):
            # Free: only our list holds the tensor, only the tensor's attribute holds its data.
            if others == 0 and data_others == 1 and not t.busy:
                return t
        tensor = SharedTensor.create(self.shape, self.dtype)
        if len(self.tensors) < self.limit:
            self.tensors.append(tensor)
        return tensor

    def close(self) -> None:
        """Free the tensors nobody holds; a result still held lives on (and is unlinked when
        its last reference goes)."""
        held = outside_references(self.tensors)
        for t, others in zip(self.tensors, held):
            if others == 0:
                t.close()
        self.tensors = []


class Client:
    """A connection to a worker. Create it with :func:`nerve.connect` or ``Worker.connect``.

    ``bytes_sent`` / ``bytes_received`` count every byte of every message on the control
    channel after the handshake (payload plus the 4-byte length prefix).
    """

    def __init__(self, conn: Connection, address: str) -> None:
        self._conn = conn
        self._channel = Channel(conn)
        self.address = address
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._ids = iter(range(1, 1 << 62))
        self._pending: dict[int, PendingReply] = {}
        self._programs: dict[str, dict[str, Any]] = {}
        self._pools: dict[tuple[str, str, str], SharedPool] = {}
        # JSON of a run's program and tensor references, by the references' identities.
        self._run_json: dict[tuple[Any, ...], tuple[list[dict[str, Any]], str]] = {}
        self.bytes_sent = 0
        self.bytes_received = 0
        self.broken: BaseException | None = None
        self._poller = select.poll()  # reused: Connection.poll builds a selector per call
        self._poller.register(conn.fileno(), select.POLLIN)
        hello = self._call({"op": "hello"}, timeout=30)
        self.worker_pid = int(hello["pid"])
        self._programs.update(hello.get("programs", {}))

    # -- channel ---------------------------------------------------------------------

    def _send(self, message: dict[str, Any] | bytes) -> None:
        data = message if isinstance(message, bytes) else encode(message)
        with self._send_lock:
            if self.broken is not None:
                raise WorkerError(f"the worker connection is closed: {self.broken}")
            try:
                self.bytes_sent += self._channel.send(data)
            except (OSError, ValueError) as exc:
                self._fail_all(exc)
                raise WorkerError(f"cannot reach the worker: {exc}") from None

    def _fail_all(self, exc: BaseException) -> None:
        self.broken = exc
        pending, self._pending = self._pending, {}
        for item in pending.values():
            item._complete(None, WorkerError(f"lost the worker connection: {exc}"))

    def _dispatch(self, data: bytes) -> None:
        self.bytes_received += wire_size(data)
        reply = decode(data)
        item = self._pending.pop(reply.get("id"), None)
        if item is None:
            log.debug("client: reply for unknown request %r", reply.get("id"))
            return
        if reply.get("ok"):
            item._complete(reply, None)
        else:
            item._complete(reply, remote_error(reply))

    def _wait(self, item: PendingReply, timeout: float | None) -> None:
        """Wait for ``item``'s reply; whichever waiter holds the read lock reads the socket."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not item._event.is_set():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise JobTimeoutError(f"no reply from the worker within {timeout} s")
            if not self._read_lock.acquire(timeout=0.005):
                item._event.wait(0.005)
                continue
            try:
                if item._event.is_set():
                    break
                if self.broken is not None:
                    self._fail_all(self.broken)
                    break
                wait = 0.05 if remaining is None else min(0.05, max(0.0, remaining))
                try:
                    # A read may have brought more than one reply: serve buffered ones first.
                    if self._channel.has_message() or self._poller.poll(wait * 1e3):
                        self._dispatch(self._channel.recv(MAX_MESSAGE))
                except (EOFError, OSError, ValueError) as exc:
                    self._fail_all(exc)
            finally:
                self._read_lock.release()

    def _call(self, message: dict[str, Any], timeout: float | None = 60) -> dict[str, Any]:
        call = PendingReply()
        msg_id = next(self._ids)
        self._pending[msg_id] = call
        try:
            self._send({"id": msg_id, **message})
        except WorkerError:
            self._pending.pop(msg_id, None)
            raise
        self._wait(call, timeout)
        if call.error is not None:
            raise call.error
        assert call.reply is not None
        return call.reply

    # -- API -------------------------------------------------------------------------

    def load(
        self,
        name: str,
        model: str | os.PathLike[str] | Any,
        shapes: Mapping[str, Sequence[int]] | None = None,
        target: str = "host",
        *,
        batch: bool = False,
        engine: str | None = None,
        delay_ms: float = 0.0,
        replace: bool = False,
        timeout: float | None = 120,
        **options: Any,
    ) -> dict[str, Any]:
        """Compile ``model`` (a file path, or an onnx.ModelProto saved to a temporary file)
        inside the worker under ``name``; returns its inputs and outputs.

        ``batch=True`` enables dynamic batching; ``engine="null"`` loads it on the null
        engine (each run waits ``delay_ms``; for tests).
        """
        temp = None
        if not isinstance(model, (str, os.PathLike)):
            import onnx

            fd, temp = tempfile.mkstemp(suffix=".onnx")
            os.close(fd)
            onnx.save(model, temp)
            model = temp
        try:
            reply = self._call({
                "op": "load", "name": name, "path": str(Path(model).resolve()),
                "shapes": {k: list(v) for k, v in shapes.items()} if shapes else None,
                "target": target, "batch": batch, "engine": engine, "delay_ms": delay_ms,
                "replace": replace, "options": options,
            }, timeout)
        finally:
            if temp:
                os.unlink(temp)
        self._programs[name] = reply["program"]
        return dict(reply["program"])

    def programs(self) -> dict[str, dict[str, Any]]:
        """The programs the worker owns: name -> inputs, outputs, target, batch."""
        reply = self._call({"op": "programs"})
        self._programs = dict(reply["programs"])
        return dict(self._programs)

    def _spec(self, program: str) -> dict[str, Any]:
        spec = self._programs.get(program)
        if spec is None:
            self.programs()
            spec = self._programs.get(program)
        if spec is None:
            raise WorkerError(f"the worker has no program named {program!r}; load it first")
        return spec

    def _pooled(self, program: str, role: str, info: Mapping[str, Any],
                shape: tuple[int, ...]) -> SharedTensor:
        """A free client-owned SharedTensor for tensor ``info`` (from the program's spec) of
        ``program``'s inputs (role "in") or outputs ("out"), in the given shape."""
        key = (program, role, info["name"])
        pool = self._pools.get(key)
        if pool is None or pool.shape != shape:
            pool = self._pools[key] = SharedPool(shape, DType(info["dtype"]).numpy)
        return pool.acquire()

    def submit(
        self,
        program: str,
        inputs: Mapping[str, SharedTensor | np.ndarray],
        outputs: Mapping[str, SharedTensor] | None = None,
        priority: int = 0,
        deadline_ms: float | None = None,
        tag: str | None = None,
    ) -> RemoteJob:
        """Send a run and return at once. Inputs that are numpy arrays are first copied into
        client-owned SharedTensors (pass SharedTensors to avoid that copy); outputs not given
        are SharedTensors the client allocates (reused once you drop them)."""
        spec = self._spec(program)
        ins: dict[str, SharedTensor] = {}
        for name, value in inputs.items():
            if isinstance(value, SharedTensor):
                ins[name] = value
                continue
            info = next((i for i in spec["inputs"] if i["name"] == name), None)
            if info is None:
                raise WorkerError(f"{program!r} has no input {name!r}")
            array = np.asarray(value)
            staged = self._pooled(program, "in", info, tuple(array.shape))
            staged.write(array)
            ins[name] = staged
        outs: dict[str, SharedTensor] = dict(outputs or {})
        rows = None
        if spec.get("batch") and spec["inputs"]:
            first = ins.get(spec["inputs"][0]["name"])
            rows = first.shape[0] if first is not None and first.shape else None
        for info in spec["outputs"]:
            if info["name"] not in outs:
                shape = tuple(info["shape"])
                if rows is not None:
                    shape = (rows, *shape[1:])
                outs[info["name"]] = self._pooled(program, "out", info, shape)
        used = [*ins.values(), *outs.values()]
        for t in used:
            if t.busy:
                raise SharedTensorError(f"shared tensor {t.name!r} is in use by another run")
        msg_id = next(self._ids)
        job = RemoteJob(self, msg_id, outs, used)
        for t in used:
            t._local_busy += 1
        self._pending[msg_id] = job
        try:
            self._send(self._run_request(msg_id, program, int(priority), deadline_ms, tag,
                                         ins, outs))
        except WorkerError as exc:
            self._pending.pop(msg_id, None)
            job._complete(None, exc)
            raise
        return job

    def _run_request(self, msg_id: int, program: str, priority: int,
                     deadline_ms: float | None, tag: str | None,
                     ins: Mapping[str, SharedTensor], outs: Mapping[str, SharedTensor]) -> bytes:
        """A run request's bytes: the same JSON as ``encode`` makes, but the part naming the
        program and the tensors (the bulk of it) is encoded once per set of tensors.

        The cache is keyed by the identities of the tensors' reference dicts (built once per
        SharedTensor, never changed) and holds those dicts, so no key can be reused by another
        tensor while it is cached; it holds no tensor, so pooled tensors are freed as before.
        """
        refs = [t._ref for t in ins.values()] + [t._ref for t in outs.values()]
        key = (program, *ins, None, *outs, *map(id, refs))
        cached = self._run_json.get(key)
        if cached is None:
            body = encode({"program": program,
                           "inputs": {n: t._ref for n, t in ins.items()},
                           "outputs": {n: t._ref for n, t in outs.items()}}).decode()
            if len(self._run_json) >= 1024:
                self._run_json.clear()
            cached = self._run_json[key] = (refs, body[1:-1])
        deadline = "null" if deadline_ms is None else encode(deadline_ms).decode()
        label = "null" if tag is None else encode(tag).decode()
        return (f'{{"id":{msg_id},"op":"run","priority":{priority},"deadline_ms":{deadline},'
                f'"tag":{label},{cached[1]}}}').encode()

    def run(
        self,
        program: str,
        inputs: Mapping[str, SharedTensor | np.ndarray],
        outputs: Mapping[str, SharedTensor] | None = None,
        priority: int = 0,
        deadline_ms: float | None = None,
        tag: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, SharedTensor]:
        """Run ``program`` in the worker and wait: returns output name -> SharedTensor."""
        return self.submit(program, inputs, outputs, priority, deadline_ms, tag).result(timeout)

    def send_raw(self, message: dict[str, Any], timeout: float | None = 60) -> dict[str, Any]:
        """Send an arbitrary request and return the reply (raises its error). For tests and
        tools that speak the protocol directly."""
        return self._call(message, timeout)

    def stats(self) -> dict[str, Any]:
        """The worker's counters, this session's byte counts, and its Runtime.stats()."""
        return self._call({"op": "stats"})

    def release(self, names: Sequence[str] | None = None) -> list[str]:
        """Ask the worker to unmap shared tensors (all of this session's when None)."""
        return list(self._call({"op": "release", "names": names})["released"])

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools = {}
        with contextlib.suppress(OSError, EOFError):
            self._conn.close()
        if self.broken is None:
            self._fail_all(WorkerError("client closed"))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_authkey(authkey: bytes | str | None) -> bytes | None:
    if authkey is None or isinstance(authkey, bytes):
        return authkey
    try:
        return bytes.fromhex(authkey)
    except ValueError:
        return authkey.encode()


def connect(address: str | os.PathLike[str], authkey: bytes | str | None = None) -> Client:
    """Connect to a worker listening on the AF_UNIX socket ``address``."""
    addr = str(address)
    try:
        conn = _connect(addr, family="AF_UNIX", authkey=_parse_authkey(authkey))
    except (OSError, EOFError) as exc:
        raise WorkerError(f"cannot connect to a nerve worker at {addr}: {exc}") from None
    except Exception as exc:  # AuthenticationError and friends
        raise WorkerError(f"worker at {addr} refused the connection: {exc}") from None
    return Client(conn, addr)
