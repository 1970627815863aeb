"""``nerve worker``: a process that owns programs and runs them for clients over shared memory.

Clients connect with ``nerve.connect(address, authkey)``, load models by path, and run them on
SharedTensors; tensors never cross the socket. The worker runs until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

from nerve.errors import WorkerError
from nerve.runtime.power import POWER_MODES


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="serve programs to other processes over shared memory",
        description="Start a worker process that owns compiled programs. Clients connect "
        "with nerve.connect(ADDRESS, authkey) and run programs on nerve.SharedTensor inputs "
        "and outputs (POSIX shared memory); only small control messages cross the socket.",
    )
    parser.add_argument(
        "--address",
        metavar="PATH",
        help="AF_UNIX socket path to listen on (default: a new private temporary directory)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="load the ONNX model at PATH as program NAME at start (repeatable)",
    )
    parser.add_argument("--power-mode", choices=sorted(POWER_MODES), default="balanced")
    parser.add_argument("--max-queue", type=int, default=1024, metavar="N",
                        help="jobs that may wait at once before clients get QueueFullError")
    key = parser.add_mutually_exclusive_group()
    key.add_argument("--authkey-file", metavar="PATH",
                     help="file holding the connection authkey (hex); none: no authkey, the "
                     "socket's permissions (0600) protect it")
    key.add_argument("--authkey-stdin", action="store_true",
                     help="read the authkey (hex) from the first line of standard input")
    parser.add_argument("--ready-stdout", action="store_true",
                        help="print 'ready ADDRESS' on stdout once listening (for supervisors)")
    parser.add_argument("--parent-pid", type=int, default=None, metavar="PID",
                        help="exit when the process PID (the parent) exits")
    return parser


def _authkey(args: argparse.Namespace) -> bytes | None:
    raw: str | None = None
    if args.authkey_stdin:
        raw = sys.stdin.readline().strip()
    elif args.authkey_file:
        with open(args.authkey_file) as f:
            raw = f.read().strip()
    if not raw:
        return None
    try:
        return bytes.fromhex(raw)
    except ValueError:
        raise WorkerError("the authkey must be hexadecimal") from None


def run(args: argparse.Namespace) -> int:
    from nerve.runtime.worker import serve

    models = {}
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise WorkerError(f"--model expects NAME=PATH, got {item!r}")
        models[name] = path
    address = args.address
    if address is None:
        address = os.path.join(tempfile.mkdtemp(prefix="nerve-worker-"), "worker.sock")
    authkey = _authkey(args)

    def ready(addr: str) -> None:
        if args.ready_stdout:
            print(f"ready {addr}", flush=True)
            os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # later prints go to stderr
        else:
            print(f"nerve worker listening on {addr} (pid {os.getpid()})", file=sys.stderr,
                  flush=True)

    serve(address, authkey, models, args.power_mode, args.max_queue, on_ready=ready,
          parent_pid=args.parent_pid)
    return 0
