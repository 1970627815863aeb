"""One client connection inside the worker: its requests, its shared-memory mappings, its runs.

Every shared-memory reference is validated before use (name, header, byte window, alignment,
exact size); a bad request gets an error reply and the session goes on. When the client goes
away its queued jobs are cancelled and its mappings closed once no run uses them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np

from nerve.errors import NerveError, SharedTensorError, WorkerError
from nerve.runtime.program import Program, TensorInfo
from nerve.runtime.scheduler import Job
from nerve.runtime.tensors import SharedTensor, check_name
from nerve.runtime.worker.protocol import (
    MAX_MESSAGE,
    PROTOCOL,
    Channel,
    decode,
    encode,
    error_reply,
    run_reply,
    wire_size,
)

if TYPE_CHECKING:
    from nerve.runtime.worker.server import Server

log = logging.getLogger("nerve")

MAX_ATTACHMENTS = 4096  # shared-memory mappings one client session may hold open
MAX_PLANS = 256  # validated run requests one session remembers


class RunPlan:
    """A validated run request: the program and its input/output views into shared memory.

    For an unbatched program the views are also checked by the program itself
    (``prepare_feeds``/``prepare_out``) once, here, so that each run of the plan is submitted
    as already prepared instead of being validated again.
    """

    def __init__(self, program: Program, feeds: dict[str, np.ndarray],
                 outs: dict[str, np.ndarray], used: list[SharedTensor],
                 out_tensors: list[SharedTensor], batch: bool) -> None:
        self.program = program
        self.prepared = not batch
        self.feeds = program.prepare_feeds(feeds) if self.prepared else feeds
        self.outs = program.prepare_out(outs) if self.prepared else outs
        self.used = used
        self.out_tensors = out_tensors
        self.names = [t.name for t in used]

    def mark_busy(self, delta: int) -> None:
        """Raise (+1) or lower (-1) the busy count of every shared tensor the run uses."""
        for t in self.used:
            t.mark_busy(delta)


def _plan_key(program: Program, inputs: Any, outputs: Any) -> Any:
    """A hashable key for a run request's tensor references (None if they are malformed:
    the full validation will say why, or unsafe to reuse). The same references in another
    order make another key: a cache miss, never a wrong plan."""
    try:
        return (id(program),
                tuple([(n, r["name"], r["offset"], r["nbytes"], r["token"])
                       for n, r in inputs.items()]),
                tuple([(n, r["name"], r["offset"], r["nbytes"], r["token"])
                       for n, r in outputs.items()]))
    except (AttributeError, KeyError, TypeError):
        return None  # includes references without a token: those are never reused


class Session:
    """One client connection inside the worker."""

    def __init__(self, server: Server, conn: Connection, number: int) -> None:
        self.server = server
        self.conn = conn
        self.channel = Channel(conn)
        self.number = number
        self.send_lock = threading.Lock()
        self.attached: dict[str, SharedTensor] = {}
        self.plans: dict[Any, RunPlan] = {}  # validated views of repeated run requests
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

    def send(self, message: dict[str, Any] | bytes) -> None:
        """Send a reply (a message, or one already encoded); dropped once the client is gone."""
        data = message if isinstance(message, bytes) else encode(message)
        with self.send_lock:
            if self.closed:
                return
            try:
                self.bytes_sent += self.channel.send(data)
            except (OSError, EOFError, ValueError):
                self.closed = True  # the client went away; cleanup follows from serve()

    def serve(self) -> None:
        try:
            while True:
                try:
                    data = self.channel.recv(MAX_MESSAGE)
                except (EOFError, OSError):
                    break  # disconnected, died, or sent an oversized message
                self.received_at = time.perf_counter()
                self.bytes_received += wire_size(data)
                try:
                    message = decode(data)
                    if not isinstance(message, dict):
                        raise WorkerError("a request must be a JSON object")
                except (ValueError, WorkerError) as exc:
                    self.send(error_reply(None, WorkerError(f"malformed request: {exc}")))
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
            self.send(error_reply(msg_id, exc))

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

    def _batch_rows(self, inputs: Any, program: Program) -> int:
        """Rows of a batched run: the first input's shared tensor's axis 0."""
        if not isinstance(inputs, dict) or not program.inputs:
            raise SharedTensorError("a run needs its inputs as shared tensor references")
        first = program.inputs[0].name
        if first not in inputs:
            raise SharedTensorError(f"missing input {first!r}")
        tensor, _, _ = self.attach(inputs[first])
        rows = tensor.shape[0] if tensor.shape else 0
        batch = program.inputs[0].shape[0]
        if not 1 <= rows <= batch:
            raise SharedTensorError(f"input {first!r}: a batched run carries 1..{batch} rows")
        return rows

    def plan(self, message: dict[str, Any]) -> RunPlan:
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
            rows = self._batch_rows(inputs, program)
        feeds, in_tensors = self._views(inputs, program.inputs, rows, "inputs")
        outs, out_tensors = self._views(outputs, program.outputs, rows, "outputs")
        missing = [o.name for o in program.outputs if o.name not in outs]
        if missing:
            raise SharedTensorError(f"outputs {missing} need shared tensors to be written to")
        for a in outs.values():  # outputs must not overlap inputs or each other
            for b in [*feeds.values(), *(v for v in outs.values() if v is not a)]:
                if np.shares_memory(a, b):
                    raise SharedTensorError("an output's window overlaps another tensor's")
        made = RunPlan(program, feeds, outs, [*in_tensors, *out_tensors], out_tensors, batch)
        with self.lock:
            if key is not None and all(self.attached.get(t.name) is t for t in made.used):
                if len(self.plans) >= MAX_PLANS:
                    self.plans.clear()
                self.plans[key] = made
        return made

    def run(self, msg_id: Any, message: dict[str, Any]) -> None:
        plan = self.plan(message)
        priority = message.get("priority", 0)
        deadline_ms = message.get("deadline_ms")
        if not isinstance(priority, int) or not (
            deadline_ms is None or isinstance(deadline_ms, (int, float))
        ):
            raise WorkerError("priority must be an integer and deadline_ms a number or null")
        plan.mark_busy(+1)
        with self.lock:
            self.active += 1
            self.active_names.update(plan.names)
        received = self.received_at
        try:
            # inline: with the engine idle, run in this session's thread (no hand-off).
            job = self.server.runtime.submit(plan.program, plan.feeds, priority=priority,
                                             deadline_ms=deadline_ms, tag=message.get("tag"),
                                             out=plan.outs, inline=True, prepared=plan.prepared)
        except BaseException:
            plan.mark_busy(-1)
            with self.lock:
                self.active -= 1
                self.active_names.subtract(plan.names)
            raise
        if job.done():  # it ran inline: reply now
            self._finished(msg_id, job, plan, received)
            return
        with self.lock:
            self.inflight[job.id] = job  # before the callback, which removes it
        job.add_done_callback(
            lambda j: self._finished(msg_id, j, plan, received)
        )

    def _finished(self, msg_id: Any, job: Job, plan: RunPlan, received: float) -> None:
        plan.mark_busy(-1)
        versions = {}
        if job.status == "done":
            for t in plan.out_tensors:
                versions[t.name] = t.bump_version()
            self.server.runs += 1
            reply: dict[str, Any] | bytes = run_reply(
                msg_id, versions, (job.queue_time or 0.0) * 1e6, (job.run_time or 0.0) * 1e6,
                job.energy_j,
                # Request received to reply sent, inside the worker.
                (time.perf_counter() - received) * 1e6)
        else:
            error = job.exception(0)
            assert error is not None
            reply = {**error_reply(msg_id, error), "status": job.status}
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
