"""The process handle: :class:`Worker` starts a worker process (``nerve worker``) and owns it."""

from __future__ import annotations

import os
import secrets
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nerve.errors import WorkerError
from nerve.runtime.worker.client import Client, connect


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
        # Make this nerve importable there (this file is <src>/nerve/runtime/worker/process.py).
        src = str(Path(__file__).resolve().parents[3])
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
