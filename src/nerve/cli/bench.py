"""``nerve bench model.onnx [--vs ort,openvino,torch] [--threads N]``: latency against peers.

nerve (the ``cpu`` target unless ``--target`` says otherwise) and each peer runtime run the
same model on the same random inputs in the same process. Runs are *interleaved*: round after
round, every runtime gets a short block of runs, so a change in machine load during the
benchmark hits all of them alike. Each block starts with one untimed run. Reported per
runtime: compile (or session-creation) time, latency p50 / p90, throughput (runs per second at
batch 1), and nerve's p50 over the peer's.

Peers are optional: ONNX Runtime (``onnxruntime``) and OpenVINO (``openvino``) run the ONNX file
itself; PyTorch needs the ``nn.Module``, so only ``bench/peers.py`` (which builds the modules)
can include it. A peer that is not installed is listed as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import nerve
from nerve.cli import _output as out
from nerve.cli._args import add_shape_argument, load_model
from nerve.cli.run import random_input
from nerve.errors import InputError

PEERS = ("ort", "openvino", "torch")


@dataclass
class Runner:
    """One runtime ready to run the model: ``call()`` runs one inference."""

    name: str
    version: str
    compile_s: float
    call: Callable[[], object]
    notes: str = ""


@dataclass
class Stats:
    name: str
    version: str
    compile_s: float
    times_ms: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return float(np.percentile(self.times_ms, 50))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.times_ms, 90))

    @property
    def throughput(self) -> float:
        """Runs per second (batch 1) over the timed runs."""
        return 1000.0 * len(self.times_ms) / sum(self.times_ms)

    def as_dict(self) -> dict[str, object]:
        return {
            "runtime": self.name,
            "version": self.version,
            "compile_s": round(self.compile_s, 4),
            "p50_ms": round(self.p50, 4),
            "p90_ms": round(self.p90, 4),
            "mean_ms": round(statistics.fmean(self.times_ms), 4),
            "throughput_per_s": round(self.throughput, 2),
            "runs": len(self.times_ms),
        }


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# ---- runtimes ----------------------------------------------------------------------------------


def nerve_runner(
    model: Any, feeds: Mapping[str, np.ndarray], threads: int, target: str = "cpu"
) -> Runner:
    """nerve compiled for ``target`` with ``threads`` threads (``model``: path or ir.Graph)."""
    start = time.perf_counter()
    program = nerve.compile(model, target=target, threads=threads)
    compile_s = time.perf_counter() - start
    given = dict(feeds)

    def call() -> object:
        return program.run(given)

    engines = sorted({s.engine for s in program.plan.segments})
    return Runner("nerve", nerve.__version__, compile_s, call, f"engines: {', '.join(engines)}")


def ort_runner(path: str, feeds: Mapping[str, np.ndarray], threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    start = time.perf_counter()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    compile_s = time.perf_counter() - start
    names = {i.name for i in session.get_inputs()}
    given = {k: v for k, v in feeds.items() if k in names}
    return Runner("onnxruntime", ort.__version__, compile_s, lambda: session.run(None, given))


def openvino_runner(path: str, feeds: Mapping[str, np.ndarray], threads: int) -> Runner:
    import openvino as ov

    core = ov.Core()
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        # fp32 like the others: on AVX-512-BF16 CPUs OpenVINO would otherwise compute in bf16.
        "INFERENCE_PRECISION_HINT": "f32",
    }
    start = time.perf_counter()
    compiled = core.compile_model(path, "CPU", config)
    request = compiled.create_infer_request()
    compile_s = time.perf_counter() - start
    given = dict(feeds)
    version = ov.__version__.split("-")[0]  # "2026.4.1-22982-e213a14..." -> "2026.4.1"
    return Runner("openvino", version, compile_s, lambda: request.infer(given))


def torch_runner(module: Any, feeds: Mapping[str, np.ndarray], threads: int) -> Runner:
    """Eager PyTorch (``inference_mode``) on the module the ONNX file was exported from."""
    import torch

    torch.set_num_threads(threads)
    tensors = [torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()]

    def call() -> object:
        with torch.inference_mode():
            return module(*tensors)

    return Runner("torch", torch.__version__, 0.0, call, "eager")


def make_runners(
    path: str,
    feeds: Mapping[str, np.ndarray],
    threads: int,
    peers: Sequence[str],
    nerve_model: Any = None,
    torch_module: Any = None,
    target: str = "cpu",
) -> tuple[list[Runner], dict[str, str]]:
    """nerve plus the requested peers; returns (runners, skipped peer -> why)."""
    runners = [nerve_runner(nerve_model if nerve_model is not None else path, feeds, threads,
                            target)]  # fmt: skip
    skipped: dict[str, str] = {}
    for peer in peers:
        try:
            if peer == "ort":
                runners.append(ort_runner(path, feeds, threads))
            elif peer == "openvino":
                runners.append(openvino_runner(path, feeds, threads))
            elif peer == "torch":
                if torch_module is None:
                    skipped[peer] = "needs the PyTorch module (bench/peers.py has it)"
                    continue
                runners.append(torch_runner(torch_module, feeds, threads))
            else:
                raise InputError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")
        except ImportError as exc:
            skipped[peer] = f"not installed ({exc.name or exc})"
        except InputError:
            raise
        except Exception as exc:  # a peer failing on a model is a result, not a crash
            skipped[peer] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return runners, skipped


# ---- measuring ----------------------------------------------------------------------------


# Pause before each block: runtimes' worker threads spin after a call (ONNX Runtime's pool,
# OpenMP in torch: up to ~200 ms), and on a 2-core machine a spinning thread of the previous
# runtime takes a core from the next one. Measured with torch in the line-up, nerve fp32
# GEMMs dropped to a few GFLOP/s in the block right after torch's.
SETTLE_S = 0.25


def measure(
    runners: Sequence[Runner], seconds: float = 3.0, rounds: int = 5, settle: float = SETTLE_S
) -> list[Stats]:
    """Interleaved timing: ``rounds`` rounds, each giving every runner a block of runs.

    Each runner gets about ``seconds`` of timed runs in total (at least one run per block).
    Before each block the machine is left idle for ``settle`` seconds (see ``SETTLE_S``).
    """
    for r in runners:  # first run: lazy initialisation, page faults
        r.call()
    estimates = []
    for r in runners:
        start = time.perf_counter()
        r.call()
        estimates.append(max(time.perf_counter() - start, 1e-6))
    per_block = [max(1, int(seconds / rounds / e)) for e in estimates]
    stats = [Stats(r.name, r.version, r.compile_s) for r in runners]
    for _ in range(rounds):
        for r, s, n in zip(runners, stats, per_block):
            time.sleep(settle)
            r.call()  # untimed: caches and this runtime's threads warm again
            for _ in range(n):
                start = time.perf_counter()
                r.call()
                s.times_ms.append((time.perf_counter() - start) * 1000.0)
    return stats


def random_feeds(program_inputs: Sequence[Any], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {info.name: random_input(info, rng) for info in program_inputs}


def results_table(stats: Sequence[Stats], title: str) -> out.Table:
    table = out.Table(
        "runtime", "version", "compile s", "p50 ms", "p90 ms", "runs/s", "nerve / peer",
        title=title, align="llrrrrr",
    )  # fmt: skip
    ours = stats[0].p50
    for s in stats:
        ratio = "" if s is stats[0] else f"{ours / s.p50:.2f}"
        table.add_row(s.name, s.version, f"{s.compile_s:.2f}", f"{s.p50:.3f}", f"{s.p90:.3f}",
                      f"{s.throughput:.1f}", ratio)  # fmt: skip
    return table


# ---- the subcommand ----------------------------------------------------------------------


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="time a model on nerve against ONNX Runtime / OpenVINO",
        description="Compile an ONNX model with nerve and time it against peer runtimes "
        "measured in the same run (interleaved), on random inputs at the model's shapes.",
    )
    parser.add_argument("model", help="path of an ONNX model")
    parser.add_argument(
        "--vs", default="ort", metavar="PEERS",
        help="comma-separated peers: ort, openvino, torch (default ort; 'none' for nerve only)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="threads per runtime (default 2)")
    parser.add_argument("--target", default="cpu", help="nerve's target (default cpu)")
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="timed seconds per runtime (default 3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    add_shape_argument(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    peers = [p.strip() for p in args.vs.split(",") if p.strip() and p.strip() != "none"]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise InputError(f"--vs: unknown peers {unknown}; choose from {', '.join(PEERS)}")
    with out.Progress(f"loading {args.model}"):
        _, graph = load_model(args.model, args.shape)
    feeds = _feeds(graph, args)
    with out.Progress("compiling and creating sessions"):
        runners, skipped = make_runners(args.model, feeds, args.threads, peers, nerve_model=graph,
                                        target=args.target)  # fmt: skip
    with out.Progress(f"timing {len(runners)} runtimes"):
        stats = measure(runners, seconds=args.seconds)
    out.heading(f"{args.model}  ({args.threads} threads, batch as given)")
    out.emit_table(results_table(stats, "latency (interleaved runs)"))
    for runner in runners:
        if runner.notes:
            out.emit(f"{runner.name}: {runner.notes}")
    for peer, why in skipped.items():
        out.warn(f"{peer} skipped: {why}")
    return 0


def _feeds(graph: Any, args: argparse.Namespace) -> dict[str, np.ndarray]:
    from nerve.runtime import TensorInfo

    return random_feeds([TensorInfo.of(v) for v in graph.inputs], args.seed)
