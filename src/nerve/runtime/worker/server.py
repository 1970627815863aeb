"""The worker process: a Runtime, the programs it owns, and a listener that starts one
:class:`~nerve.runtime.worker.session.Session` per client connection (:func:`serve`)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection, Listener
from typing import Any

from nerve.errors import WorkerError
from nerve.runtime.program import Program, null_program
from nerve.runtime.scheduler import Runtime
from nerve.runtime.worker.protocol import describe as describe_program
from nerve.runtime.worker.session import Session

log = logging.getLogger("nerve")


class Server:
    """The worker: a Runtime, the programs it owns, and the client sessions."""

    def __init__(self, power_mode: str, max_queue: int) -> None:
        self.runtime = Runtime(power_mode, max_queue=max_queue)
        self.programs: dict[str, tuple[Program, bool]] = {}
        self.sessions: set[Session] = set()
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
        return describe_program(program, batch)

    def program(self, name: Any) -> tuple[Program, bool]:
        with self.lock:
            found = self.programs.get(name) if isinstance(name, str) else None
        if found is None:
            raise WorkerError(f"no program named {name!r}; load it first")
        return found

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {n: describe_program(p, b) for n, (p, b) in self.programs.items()}

    def add(self, conn: Connection) -> None:
        with self.lock:
            self.count += 1
            session = Session(self, conn, self.count)
            self.sessions.add(session)
        session.thread.start()

    def forget(self, session: Session) -> None:
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
    server = Server(power_mode, max_queue)
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
