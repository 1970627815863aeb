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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Client as _connect
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

import numpy as np

from nerve.errors import (
    JobTimeoutError,
    NerveError,
    SharedTensorError,
    WorkerError,
)
from nerve.runtime.program import Program, TensorInfo, null_program
from nerve.runtime.scheduler import Job, Runtime
from nerve.runtime.tensors import SharedTensor, check_name, outside_references

log = logging.getLogger("nerve")

MAX_MESSAGE = 1 << 20  # control messages are small; anything bigger is refused
MAX_ATTACHMENTS = 4096  # shared-memory mappings one client session may hold open
MAX_PLANS = 256  # validated run requests one session remembers
PROTOCOL = 1


def _error_reply(msg_id: Any, exc: BaseException) -> dict[str, Any]:
    return {"id": msg_id, "ok": False,
            "error": {"type": type(exc).__name__, "message": str(exc)}}


def _describe(program: Program, batch: bool) -> dict[str, Any]:
    def infos(items: Sequence[TensorInfo]) -> list[dict[str, Any]]:
        return [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in items]

    return {"inputs": infos(program.inputs), "outputs": infos(program.outputs),
            "target": program.target, "batch": batch}


# =========================================================================== worker side


class _RunPlan:
    """A validated run request: the program and its input/output views into shared memory."""

    def __init__(self, program: Program, feeds: dict[str, np.ndarray],
                 outs: dict[str, np.ndarray], used: list[SharedTensor],
                 out_tensors: list[SharedTensor]) -> None:
        self.program = program
        self.feeds = feeds
        self.outs = outs
        self.used = used
        self.out_tensors = out_tensors
        self.names = [t.name for t in used]


def _plan_key(program: Program, inputs: Any, outputs: Any) -> Any:
    """A hashable key for a run request's tensor references (None if they are malformed:
    the full validation will say why, or unsafe to reuse)."""
    try:
        refs = [tuple(sorted((n, r["name"], r["offset"], r["nbytes"], r["token"])
                             for n, r in side.items())) for side in (inputs, outputs)]
        return (id(program), *refs)
    except (AttributeError, KeyError, TypeError):
        return None  # includes references without a token: those are never reused


class _Session:
    """One client connection inside the worker."""

    def __init__(self, server: _Server, conn: Connection, number: int) -> None:
        self.server = server
        self.conn = conn
        self.number = number
        self.send_lock = threading.Lock()
        self.attached: dict[str, SharedTensor] = {}
        self.plans: dict[Any, _RunPlan] = {}  # validated views of repeated run requests
        self.inflight: dict[int, Job] = {}  # queued or running jobs (to cancel on disconnect)
        self.active = 0  # runs between submit and reply (inline runs included)
        self.active_names: Counter[str] = Counter()  # shared tensors those runs use
        self.lock = threading.Lock()
        self.closed = False
        self.released = False
        self.bytes_received = 0
        self.bytes_sent = 0
        self.received_at = 0.0
        self.thread = threading.Thread(target=self.serve, name=f"nerve-session-{number}",
                                       daemon=True)

    # -- channel ---------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        with self.send_lock:
            if self.closed:
                return
            try:
                self.conn.send_bytes(data)
                self.bytes_sent += len(data) + 4
            except (OSError, EOFError, ValueError):
                self.closed = True  # the client went away; cleanup follows from serve()

    def serve(self) -> None:
        try:
            while True:
                try:
                    data = self.conn.recv_bytes(MAX_MESSAGE)
                except (EOFError, OSError):
                    break  # disconnected, died, or sent an oversized message
                self.received_at = time.perf_counter()
                self.bytes_received += len(data) + 4
                try:
                    message = json.loads(data)
                    if not isinstance(message, dict):
                        raise WorkerError("a request must be a JSON object")
                except (ValueError, WorkerError) as exc:
                    self.send(_error_reply(None, WorkerError(f"malformed request: {exc}")))
                    continue
                self.handle(message)
        finally:
            self.close()

    def handle(self, message: dict[str, Any]) -> None:
        msg_id = message.get("id")
        op = message.get("op")
        try:
            if op == "run":
                self.run(msg_id, message)  # replies when the job finishes
                return
            handler = {"hello": self.op_hello, "load": self.op_load,
                       "programs": self.op_programs, "release": self.op_release,
                       "stats": self.op_stats}.get(str(op))
            if handler is None:
                raise WorkerError(f"unknown op {op!r}")
            reply = handler(message)
            self.send({"id": msg_id, "ok": True, **reply})
        except Exception as exc:  # every failure is the request's, never the worker's
            if not isinstance(exc, NerveError):
                log.exception("worker: request %r failed", op)
            self.send(_error_reply(msg_id, exc))

    # -- ops -------------------------------------------------------------------------

    def op_hello(self, message: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "protocol": PROTOCOL, "programs": self.server.describe()}

    def op_programs(self, message: dict[str, Any]) -> dict[str, Any]:
        return {"programs": self.server.describe()}

    def op_load(self, message: dict[str, Any]) -> dict[str, Any]:
        name = message.get("name")
        if not isinstance(name, str) or not name:
            raise WorkerError("load needs a program name")
        return {"program": self.server.load(name, message)}

    def op_release(self, message: dict[str, Any]) -> dict[str, Any]:
        names = message.get("names")
        released = []
        with self.lock:
            busy = {n for n, count in self.active_names.items() if count > 0}
            for name in list(self.attached) if names is None else names:
                if name in self.attached and name not in busy:
                    self.attached.pop(name).close()
                    released.append(name)
            if released:
                self.plans.clear()
        return {"released": released}

    def op_stats(self, message: dict[str, Any]) -> dict[str, Any]:
        return {"worker": self.server.worker_stats(), "session": self.session_stats(),
                "runtime": self.server.runtime.stats()}

    def session_stats(self) -> dict[str, Any]:
        return {"bytes_received": self.bytes_received, "bytes_sent": self.bytes_sent,
                "attachments": len(self.attached), "inflight": self.active}

    # -- runs ------------------------------------------------------------------------

    def attach(self, ref: Any) -> tuple[SharedTensor, int, int]:
        """The session's mapping of ``ref`` (validated), and its byte window."""
        if not isinstance(ref, dict):
            raise SharedTensorError(f"a tensor reference must be an object, got {ref!r}")
        name = check_name(str(ref.get("name", "")))
        offset, nbytes = ref.get("offset"), ref.get("nbytes")
        if not isinstance(offset, int) or not isinstance(nbytes, int):
            raise SharedTensorError(f"{name!r}: offset and nbytes must be integers")
        if offset < 0 or nbytes < 0:
            raise SharedTensorError(f"{name!r}: negative offset {offset} or size {nbytes}")
        token = ref.get("token")
        with self.lock:
            tensor = self.attached.get(name)
            if tensor is not None and (token is None or tensor.token.hex() != token):
                # The name may now belong to a new segment (without a token we cannot tell):
                # drop the old mapping and map it afresh.
                self.attached.pop(name).close()
                self.plans.clear()
                tensor = None
            if tensor is None:
                if len(self.attached) >= MAX_ATTACHMENTS:
                    raise SharedTensorError(
                        f"this session holds {MAX_ATTACHMENTS} shared tensors; release some"
                    )
                tensor = SharedTensor.attach(name)
                if token is not None and tensor.token.hex() != token:
                    tensor.close()
                    raise SharedTensorError(f"{name!r} is not the tensor the client created")
                self.attached[name] = tensor
        return tensor, offset, nbytes

    def _views(
        self, refs: Any, infos: Sequence[TensorInfo], batch_rows: int | None, role: str
    ) -> tuple[dict[str, np.ndarray], list[SharedTensor]]:
        if not isinstance(refs, dict):
            raise SharedTensorError(f"{role} must map tensor names to shared tensor references")
        known = {i.name: i for i in infos}
        unknown = [n for n in refs if n not in known]
        if unknown:
            raise SharedTensorError(f"unknown {role} {unknown}; the program has {list(known)}")
        views: dict[str, np.ndarray] = {}
        tensors: list[SharedTensor] = []
        for name, ref in refs.items():
            info = known[name]
            tensor, offset, nbytes = self.attach(ref)
            shape = info.shape
            if batch_rows is not None:
                shape = (batch_rows, *info.shape[1:])
            try:
                views[name] = tensor.data_view(offset, nbytes, info.numpy_dtype, shape)
            except SharedTensorError as exc:
                raise SharedTensorError(f"{role[:-1]} {name!r}: {exc}") from None
            tensors.append(tensor)
        return views, tensors

    def plan(self, message: dict[str, Any]) -> _RunPlan:
        """The validated views for a run request; repeated requests reuse the same plan."""
        program, batch = self.server.program(message.get("program"))
        inputs, outputs = message.get("inputs", {}), message.get("outputs", {})
        key = _plan_key(program, inputs, outputs)
        with self.lock:
            cached = self.plans.get(key) if key is not None else None
        if cached is not None:
            return cached
        rows = None
        if batch:
            rows = _rows_of(self, inputs, program)
        feeds, in_tensors = self._views(inputs, program.inputs, rows, "inputs")
        outs, out_tensors = self._views(outputs, program.outputs, rows, "outputs")
        missing = [o.name for o in program.outputs if o.name not in outs]
        if missing:
            raise SharedTensorError(f"outputs {missing} need shared tensors to be written to")
        for a in outs.values():  # outputs must not overlap inputs or each other
            for b in [*feeds.values(), *(v for v in outs.values() if v is not a)]:
                if np.shares_memory(a, b):
                    raise SharedTensorError("an output's window overlaps another tensor's")
        made = _RunPlan(program, feeds, outs, [*in_tensors, *out_tensors], out_tensors)
        with self.lock:
            if key is not None and all(self.attached.get(t.name) is t for t in made.used):
                if len(self.plans) >= MAX_PLANS:
                    self.plans.clear()
                self.plans[key] = made
        return made

    def run(self, msg_id: Any, message: dict[str, Any]) -> None:
        plan = self.plan(message)
        program, feeds, outs = plan.program, plan.feeds, plan.outs
        used = plan.used
        priority = message.get("priority", 0)
        deadline_ms = message.get("deadline_ms")
        if not isinstance(priority, int) or not (
            deadline_ms is None or isinstance(deadline_ms, (int, float))
        ):
            raise WorkerError("priority must be an integer and deadline_ms a number or null")
        for t in used:
            t.mark_busy(+1)
        with self.lock:
            self.active += 1
            self.active_names.update(plan.names)
        try:
            # inline: with the engine idle, run in this session's thread (no hand-off).
            job = self.server.runtime.submit(program, feeds, priority=priority,
                                             deadline_ms=deadline_ms, tag=message.get("tag"),
                                             out=outs, inline=True)
        except BaseException:
            for t in used:
                t.mark_busy(-1)
            with self.lock:
                self.active -= 1
                self.active_names.subtract(plan.names)
            raise
        with self.lock:
            self.inflight[job.id] = job  # before the callback, which removes it
        received = self.received_at
        job.add_done_callback(
            lambda j: self._finished(msg_id, j, plan, received)
        )

    def _finished(self, msg_id: Any, job: Job, plan: _RunPlan, received: float) -> None:
        for t in plan.used:
            t.mark_busy(-1)
        versions = {}
        if job.status == "done":
            for t in plan.out_tensors:
                versions[t.name] = t.bump_version()
            self.server.runs += 1
            reply: dict[str, Any] = {
                "id": msg_id, "ok": True, "status": job.status, "versions": versions,
                "queue_us": (job.queue_time or 0.0) * 1e6, "run_us": (job.run_time or 0.0) * 1e6,
                "energy_j": job.energy_j,
                # Request received to reply sent, inside the worker.
                "worker_us": (time.perf_counter() - received) * 1e6,
            }
        else:
            error = job.exception(0)
            assert error is not None
            reply = {**_error_reply(msg_id, error), "status": job.status}
        self.send(reply)
        with self.lock:
            self.inflight.pop(job.id, None)
            self.active -= 1
            self.active_names.subtract(plan.names)
            release = self.closed and self.active == 0
        if release:
            self.release_all()

    # -- teardown --------------------------------------------------------------------

    def close(self) -> None:
        """The client is gone: cancel its queued jobs; release mappings once none runs."""
        with self.send_lock:
            self.closed = True
        with contextlib.suppress(OSError, EOFError):
            self.conn.close()
        with self.lock:
            jobs = list(self.inflight.values())
        for job in jobs:
            job.cancel()  # queued ones end now (their callbacks drop them from inflight)
        with self.lock:
            release = self.active == 0
        if release:
            self.release_all()

    def release_all(self) -> None:
        with self.lock:
            if self.released:
                return
            self.released = True
            tensors, self.attached = list(self.attached.values()), {}
            self.plans.clear()
        for t in tensors:
            t.close()
        self.server.forget(self)


def _rows_of(session: _Session, inputs: Any, program: Program) -> int:
    """Rows of a batched run: the first input's shared tensor's axis 0."""
    if not isinstance(inputs, dict) or not program.inputs:
        raise SharedTensorError("a run needs its inputs as shared tensor references")
    first = program.inputs[0].name
    if first not in inputs:
        raise SharedTensorError(f"missing input {first!r}")
    tensor, _, _ = session.attach(inputs[first])
    rows = tensor.shape[0] if tensor.shape else 0
    batch = program.inputs[0].shape[0]
    if not 1 <= rows <= batch:
        raise SharedTensorError(f"input {first!r}: a batched run carries 1..{batch} rows")
    return rows


class _Server:
    """The worker: a Runtime, the programs it owns, and the client sessions."""

    def __init__(self, power_mode: str, max_queue: int) -> None:
        self.runtime = Runtime(power_mode, max_queue=max_queue)
        self.programs: dict[str, tuple[Program, bool]] = {}
        self.sessions: set[_Session] = set()
        self.lock = threading.Lock()
        self.count = 0
        self.runs = 0

    def load(self, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        path = spec.get("path")
        if not isinstance(path, str):
            raise WorkerError("load needs the model's file path (models are not sent as bytes)")
        with self.lock:
            if name in self.programs and not spec.get("replace"):
                raise WorkerError(f"a program named {name!r} is loaded; pass replace=True")
        shapes = spec.get("shapes")
        shapes = {k: tuple(v) for k, v in shapes.items()} if isinstance(shapes, dict) else None
        batch = bool(spec.get("batch", False))
        if spec.get("engine") == "null":
            program = null_program(path, shapes, delay_s=float(spec.get("delay_ms", 0)) / 1e3)
        else:
            from nerve.runtime.compile import compile as compile_program

            options = spec.get("options") or {}
            program = compile_program(path, spec.get("target", "host"), shapes, **options)
        self.runtime.register(program, name=f"{name}#{self.count}" if name in self.programs
                              else name, batch=batch)
        with self.lock:
            self.count += 1
            self.programs[name] = (program, batch)
        return _describe(program, batch)

    def program(self, name: Any) -> tuple[Program, bool]:
        with self.lock:
            found = self.programs.get(name) if isinstance(name, str) else None
        if found is None:
            raise WorkerError(f"no program named {name!r}; load it first")
        return found

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {n: _describe(p, b) for n, (p, b) in self.programs.items()}

    def add(self, conn: Connection) -> None:
        with self.lock:
            self.count += 1
            session = _Session(self, conn, self.count)
            self.sessions.add(session)
        session.thread.start()

    def forget(self, session: _Session) -> None:
        with self.lock:
            self.sessions.discard(session)

    def worker_stats(self) -> dict[str, Any]:
        with self.lock:
            sessions = list(self.sessions)
        return {
            "pid": os.getpid(),
            "sessions": len(sessions),
            "attachments": sum(len(s.attached) for s in sessions),
            "inflight": sum(s.active for s in sessions),
            "runs": self.runs,
            "programs": sorted(self.programs),
        }

    def shutdown(self) -> None:
        self.runtime.close(cancel_pending=True, timeout=10)
        with self.lock:
            sessions = list(self.sessions)
        for s in sessions:
            s.close()


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def serve(
    address: str,
    authkey: bytes | None = None,
    models: Mapping[str, str] | None = None,
    power_mode: str = "balanced",
    max_queue: int = 1024,
    on_ready: Any = None,
    parent_pid: int | None = None,
) -> None:
    """Run a worker in this process until SIGTERM/SIGINT (call from the main thread)."""
    server = _Server(power_mode, max_queue)
    for name, path in (models or {}).items():
        server.load(name, {"path": path})
    if os.path.exists(address):
        os.unlink(address)  # a stale socket from a worker that was killed
    listener = Listener(address, family="AF_UNIX", backlog=64, authkey=authkey)
    os.chmod(address, 0o600)
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    if parent_pid:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    try:
        if on_ready is not None:
            on_ready(address)
        while True:
            try:
                conn = listener.accept()
            except _Stop:
                raise
            except Exception as exc:  # a failed handshake is the client's problem
                log.debug("worker: connection refused: %s", exc)
                continue
            server.add(conn)
    except _Stop:
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        listener.close()
        server.shutdown()


# =========================================================================== client side


class RemoteJob:
    """A run submitted to a worker; ``result()`` returns the output SharedTensors."""

    def __init__(self, client: Client, msg_id: int, outputs: dict[str, SharedTensor],
                 used: list[SharedTensor]) -> None:
        self.client = client
        self.id = msg_id
        self.outputs = outputs
        self._used = used
        self._event = threading.Event()
        self.reply: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def done(self) -> bool:
        return self._event.is_set()

    def _complete(self, reply: dict[str, Any] | None, error: BaseException | None) -> None:
        for t in self._used:
            t._local_busy = max(0, t._local_busy - 1)
        self.reply, self.error = reply, error
        self._event.set()

    @property
    def status(self) -> str:
        if not self._event.is_set():
            return "pending"
        if self.reply is not None:
            return str(self.reply.get("status", "done" if self.reply.get("ok") else "failed"))
        return "failed"

    def result(self, timeout: float | None = None) -> dict[str, SharedTensor]:
        self.client._wait(self, timeout)
        if self.error is not None:
            raise self.error
        return self.outputs


def _remote_error(reply: Mapping[str, Any]) -> NerveError:
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


class _SharedPool:
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
        self.address = address
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._ids = iter(range(1, 1 << 62))
        self._pending: dict[int, RemoteJob | _Call] = {}
        self._programs: dict[str, dict[str, Any]] = {}
        self._pools: dict[tuple[str, str, str], _SharedPool] = {}
        self.bytes_sent = 0
        self.bytes_received = 0
        self.broken: BaseException | None = None
        self._poller = select.poll()  # reused: Connection.poll builds a selector per call
        self._poller.register(conn.fileno(), select.POLLIN)
        hello = self._call({"op": "hello"}, timeout=30)
        self.worker_pid = int(hello["pid"])
        self._programs.update(hello.get("programs", {}))

    # -- channel ---------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        with self._send_lock:
            if self.broken is not None:
                raise WorkerError(f"the worker connection is closed: {self.broken}")
            try:
                self._conn.send_bytes(data)
            except (OSError, ValueError) as exc:
                self._fail_all(exc)
                raise WorkerError(f"cannot reach the worker: {exc}") from None
            self.bytes_sent += len(data) + 4

    def _fail_all(self, exc: BaseException) -> None:
        self.broken = exc
        pending, self._pending = self._pending, {}
        for item in pending.values():
            item._complete(None, WorkerError(f"lost the worker connection: {exc}"))

    def _dispatch(self, data: bytes) -> None:
        self.bytes_received += len(data) + 4
        reply = json.loads(data)
        item = self._pending.pop(reply.get("id"), None)
        if item is None:
            log.debug("client: reply for unknown request %r", reply.get("id"))
            return
        if reply.get("ok"):
            item._complete(reply, None)
        else:
            item._complete(reply, _remote_error(reply))

    def _wait(self, item: RemoteJob | _Call, timeout: float | None) -> None:
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
                    if self._poller.poll(wait * 1e3):
                        self._dispatch(self._conn.recv_bytes(MAX_MESSAGE))
                except (EOFError, OSError) as exc:
                    self._fail_all(exc)
            finally:
                self._read_lock.release()

    def _call(self, message: dict[str, Any], timeout: float | None = 60) -> dict[str, Any]:
        call = _Call()
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

    def _pool(self, program: str, role: str, name: str, shape: tuple[int, ...],
              dtype: np.dtype) -> _SharedPool:
        key = (program, role, name)
        pool = self._pools.get(key)
        if pool is None or pool.shape != shape:
            pool = self._pools[key] = _SharedPool(shape, dtype)
        return pool

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
        from nerve.ir import DType

        ins: dict[str, SharedTensor] = {}
        for name, value in inputs.items():
            if isinstance(value, SharedTensor):
                ins[name] = value
                continue
            info = next((i for i in spec["inputs"] if i["name"] == name), None)
            if info is None:
                raise WorkerError(f"{program!r} has no input {name!r}")
            array = np.asarray(value)
            pool = self._pool(program, "in", name, tuple(array.shape),
                              DType(info["dtype"]).numpy)
            staged = pool.acquire()
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
                pool = self._pool(program, "out", info["name"], shape, DType(info["dtype"]).numpy)
                outs[info["name"]] = pool.acquire()
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
            self._send({
                "id": msg_id, "op": "run", "program": program, "priority": int(priority),
                "deadline_ms": deadline_ms, "tag": tag,
                "inputs": {n: t._ref for n, t in ins.items()},
                "outputs": {n: t._ref for n, t in outs.items()},
            })
        except WorkerError as exc:
            self._pending.pop(msg_id, None)
            job._complete(None, exc)
            raise
        return job

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


class _Call:
    """A pending control request (not a run)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reply: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def _complete(self, reply: dict[str, Any] | None, error: BaseException | None) -> None:
        self.reply, self.error = reply, error
        self._event.set()


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


# =========================================================================== process handle


class Worker:
    """A worker process (``nerve worker``) started and owned by this process.

    >>> with Worker() as worker:                       # doctest: +SKIP
    ...     client = worker.connect()

    The socket lives in a fresh private directory unless ``address`` is given; the authkey is
    random unless given. The worker exits when this process does.
    """

    def __init__(
        self,
        address: str | os.PathLike[str] | None = None,
        *,
        models: Mapping[str, str | os.PathLike[str]] | None = None,
        power_mode: str = "balanced",
        max_queue: int = 1024,
        authkey: bytes | None = None,
        start: bool = True,
        timeout: float = 60.0,
    ) -> None:
        self._dir: str | None = None
        if address is None:
            self._dir = tempfile.mkdtemp(prefix="nerve-worker-")
            address = os.path.join(self._dir, "worker.sock")
        self.address = str(address)
        self.authkey = authkey if authkey is not None else secrets.token_bytes(32)
        self.models = {k: str(v) for k, v in (models or {}).items()}
        self.power_mode = power_mode
        self.max_queue = max_queue
        self.process: subprocess.Popen[bytes] | None = None
        if start:
            self.start(timeout)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait until it listens."""
        if self.process is not None:
            raise WorkerError("the worker is already started")
        cmd = [sys.executable, "-m", "nerve", "worker", "--address", self.address,
               "--authkey-stdin", "--ready-stdout", "--parent-pid", str(os.getpid()),
               "--power-mode", self.power_mode, "--max-queue", str(self.max_queue)]
        for name, path in self.models.items():
            cmd += ["--model", f"{name}={path}"]
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])  # make this nerve importable there
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=env)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(self.authkey.hex().encode() + b"\n")
        self.process.stdin.close()
        line = self._read_ready(self.process.stdout, timeout)
        self.process.stdout.close()
        if not line.startswith(b"ready"):
            self.stop()
            raise WorkerError(f"the worker did not start (exit status {self.process.poll()}); "
                              "see its stderr above")

    def _read_ready(self, stream: Any, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise WorkerError(f"the worker did not become ready within {timeout} s")
            ready, _, _ = select.select([stream], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(stream.fileno(), 256)
            if not chunk:
                break
            buf += chunk
        return buf

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def connect(self) -> Client:
        return connect(self.address, self.authkey)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the worker (SIGTERM, then SIGKILL after ``timeout``); returns its exit status."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._dir is not None:
            for leftover in (self.address,):
                if os.path.exists(leftover):
                    os.unlink(leftover)
            os.rmdir(self._dir)
            self._dir = None
        return proc.returncode

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        try:
            if self.is_alive():
                self.stop()
        except Exception:
            pass


__all__ = ["Client", "RemoteJob", "Worker", "connect", "serve"]
