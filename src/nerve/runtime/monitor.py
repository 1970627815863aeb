"""Monitoring: per-program statistics, Prometheus text exposition, Chrome traces.

* :class:`ProgramStats` — what :meth:`nerve.Runtime.stats` reports per program: runs, failures
  by reason, latency / queue / compute percentiles (p50, p90, p99 over the last 2048 jobs),
  batch sizes, estimated (and, where RAPL exists, measured) energy, power throttling.
* :func:`prometheus_text` — the same as Prometheus text exposition. It uses
  ``prometheus_client`` when installed (the ``serve`` and ``test`` extras) and an equivalent
  built-in writer otherwise. Metric names follow Triton's ``nv_inference_*`` with a ``nerve_``
  prefix, so dashboards translate directly.
* :class:`Profiler` — a Chrome trace (JSON, opens in Perfetto or chrome://tracing): one event per
  op from ``Program.run(feeds, profile=profiler)``, and queue/run spans per job from a Runtime.

>>> import json, numpy as np, nerve
>>> from onnx import helper, TensorProto
>>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu1")], "g",
...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
>>> prof = Profiler()
>>> _ = nerve.compile(helper.make_model(g)).run({"x": np.ones(3, np.float32)}, profile=prof)
>>> [e["name"] for e in prof.to_dict()["traceEvents"] if e["ph"] == "X"][0]
'relu1'
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nerve.ir import Node

if TYPE_CHECKING:
    from nerve.runtime.program import Program

WINDOW = 2048  # jobs kept per program for percentiles


def _percentiles_ms(samples: Iterable[float]) -> dict[str, float]:
    data = np.fromiter(samples, dtype=np.float64)
    if data.size == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0}
    p50, p90, p99 = np.percentile(data, [50, 90, 99]) * 1e3
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99),
            "mean": float(data.mean() * 1e3)}


@dataclass
class ProgramStats:
    """Counters and recent samples for one program (thread-safe)."""

    name: str
    runs: int = 0  # jobs that completed successfully
    failures: Counter[str] = field(default_factory=Counter)  # reason -> count
    executions: int = 0  # engine runs (a batch of jobs is one execution)
    rows: int = 0  # batch rows computed for jobs (without padding)
    pending: int = 0  # jobs queued now
    latency_s_total: float = 0.0
    queue_s_total: float = 0.0
    compute_s_total: float = 0.0
    energy_j: float = 0.0
    measured_energy_j: float | None = None
    throttle_s: float = 0.0
    batch_sizes: Counter[int] = field(default_factory=Counter)  # jobs per execution -> count
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    queue: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    compute: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_execution(self, jobs: int, compute_s: float, energy_j: float,
                         measured_j: float | None) -> None:
        with self.lock:
            self.executions += 1
            self.batch_sizes[jobs] += 1
            self.compute.append(compute_s)
            self.compute_s_total += compute_s
            self.energy_j += energy_j
            if measured_j is not None:
                self.measured_energy_j = (self.measured_energy_j or 0.0) + measured_j

    def record_job(self, ok: bool, latency_s: float, queue_s: float, rows: int,
                   reason: str = "error") -> None:
        with self.lock:
            if ok:
                self.runs += 1
                self.rows += rows
            else:
                self.failures[reason] += 1
            self.latency.append(latency_s)
            self.queue.append(queue_s)
            self.latency_s_total += latency_s
            self.queue_s_total += queue_s

    def record_failure(self, reason: str) -> None:
        """A job that never ran: cancelled, expired or rejected (queue full)."""
        with self.lock:
            self.failures[reason] += 1

    def snapshot(self) -> dict[str, Any]:
        """A plain-dict copy: the shape of one entry of ``Runtime.stats()``."""
        with self.lock:
            return {
                "runs": self.runs,
                "errors": self.failures.get("error", 0),
                "cancelled": self.failures.get("cancelled", 0),
                "expired": self.failures.get("expired", 0),
                "rejected": self.failures.get("rejected", 0),
                "executions": self.executions,
                "rows": self.rows,
                "pending": self.pending,
                "latency_ms": _percentiles_ms(self.latency),
                "queue_ms": _percentiles_ms(self.queue),
                "compute_ms": _percentiles_ms(self.compute),
                "batch_sizes": dict(sorted(self.batch_sizes.items())),
                "energy_j": self.energy_j,
                "measured_energy_j": self.measured_energy_j,
                "throttle_s": self.throttle_s,
                "totals_s": {"latency": self.latency_s_total, "queue": self.queue_s_total,
                             "compute": self.compute_s_total},
            }


# --------------------------------------------------------------------------- Prometheus


@dataclass
class _Family:
    name: str
    kind: str  # counter | gauge | summary
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _families(stats: Mapping[str, Mapping[str, Any]]) -> list[_Family]:
    fam = {
        "success": _Family("nerve_inference_request_success", "counter",
                           "Jobs that completed successfully."),
        "failure": _Family("nerve_inference_request_failure", "counter",
                           "Jobs that failed, by reason (error, cancelled, expired, rejected)."),
        "count": _Family("nerve_inference_count", "counter",
                         "Batch rows computed for jobs (a job of batch n counts n)."),
        "exec": _Family("nerve_inference_exec_count", "counter",
                        "Engine executions (a dynamic batch counts once)."),
        "pending": _Family("nerve_inference_pending_request_count", "gauge",
                           "Jobs waiting in the queue."),
        "request_us": _Family("nerve_inference_request_duration_us", "counter",
                              "Cumulative job latency, queued to finished, in microseconds."),
        "queue_us": _Family("nerve_inference_queue_duration_us", "counter",
                            "Cumulative time jobs waited in the queue, in microseconds."),
        "compute_us": _Family("nerve_inference_compute_duration_us", "counter",
                              "Cumulative engine execution time, in microseconds."),
        "latency": _Family("nerve_inference_latency_seconds", "summary",
                           "Job latency over the most recent jobs."),
        "batch": _Family("nerve_inference_batch_executions", "counter",
                         "Executions by the number of jobs they batched."),
        "energy": _Family("nerve_energy_estimated_joules", "counter",
                          "Estimated energy of executions (nerve's energy model)."),
        "throttle": _Family("nerve_power_throttle_seconds", "counter",
                            "Time jobs were held back to stay within the power budget."),
    }
    for program, s in sorted(stats.items()):
        lab = {"program": program}
        fam["success"].samples.append(("_total", lab, s["runs"]))
        for reason in ("error", "cancelled", "expired", "rejected"):
            key = "errors" if reason == "error" else reason
            fam["failure"].samples.append(("_total", {**lab, "reason": reason}, s[key]))
        fam["count"].samples.append(("_total", lab, s["rows"]))
        fam["exec"].samples.append(("_total", lab, s["executions"]))
        fam["pending"].samples.append(("", lab, s["pending"]))
        totals = s["totals_s"]
        fam["request_us"].samples.append(("_total", lab, totals["latency"] * 1e6))
        fam["queue_us"].samples.append(("_total", lab, totals["queue"] * 1e6))
        fam["compute_us"].samples.append(("_total", lab, totals["compute"] * 1e6))
        for q, key in (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99")):
            fam["latency"].samples.append(("", {**lab, "quantile": q}, s["latency_ms"][key] / 1e3))
        fam["latency"].samples.append(("_count", lab, s["runs"] + s["errors"]))
        fam["latency"].samples.append(("_sum", lab, totals["latency"]))
        for size, n in s["batch_sizes"].items():
            fam["batch"].samples.append(("_total", {**lab, "batch_size": str(size)}, n))
        fam["energy"].samples.append(("_total", lab, s["energy_j"]))
        fam["throttle"].samples.append(("_total", lab, s["throttle_s"]))
    return list(fam.values())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(v: float) -> str:
    """A sample value the way Prometheus' Go client prints it (and prometheus_client)."""
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    text = repr(v)
    dot = text.find(".")
    if v > 0 and dot > 6:  # large integers-valued floats switch to exponent form
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def _builtin_text(families: list[_Family]) -> str:
    lines = []
    for f in families:
        # Text format 0.0.4 names a counter family by its sample name (with _total).
        name = f.name + "_total" if f.kind == "counter" else f.name
        lines.append(f"# HELP {name} {_escape_help(f.help)}")
        lines.append(f"# TYPE {name} {f.kind}")
        for suffix, labels, value in f.samples:
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            lines.append(f"{f.name}{suffix}{{{lab}}} {_format_value(value)}")
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def prometheus_text(stats: Mapping[str, Mapping[str, Any]], use_client: bool = True) -> str:
    """Prometheus text exposition (format 0.0.4) of ``Runtime.stats()``.

    Uses prometheus_client when it is installed (and ``use_client``), else a built-in writer
    that emits the same families.
    """
    families = _families(stats)
    if use_client:
        try:
            from prometheus_client import CollectorRegistry, generate_latest
            from prometheus_client.core import Metric
        except ImportError:
            pass
        else:

            class _Collector:
                def collect(self) -> Iterable[Metric]:
                    for f in families:
                        metric = Metric(f.name, f.help, f.kind)
                        for suffix, labels, value in f.samples:
                            metric.add_sample(f.name + suffix, labels, value)
                        yield metric

            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Collector())
            return generate_latest(registry).decode()
    return _builtin_text(families)


# --------------------------------------------------------------------------- Chrome trace


class Profiler:
    """Collects Chrome trace events; :meth:`write` saves JSON that Perfetto opens.

    Pass it to ``Program.run(..., profile=profiler)`` for one event per op (host engine) or per
    segment (engines without per-op hooks), or to ``Runtime(profiler=...)`` for per-job queue
    and run spans.
    """

    def __init__(self, process_name: str = "nerve") -> None:
        self.pid = os.getpid()
        self.process_name = process_name
        self.events: list[dict[str, Any]] = []
        self._t0 = time.perf_counter_ns()
        self._lock = threading.Lock()
        self._threads: dict[int, str] = {}

    def _ts(self, ns: int) -> float:
        return (ns - self._t0) / 1e3  # microseconds

    def span(self, name: str, start_ns: int, end_ns: int, cat: str = "run",
             args: dict[str, Any] | None = None, tid: int | None = None) -> None:
        """A complete ("X") event from ``start_ns`` to ``end_ns`` (time.perf_counter_ns)."""
        if tid is None:
            tid = threading.get_native_id()
            self._threads.setdefault(tid, threading.current_thread().name)
        event = {"name": name, "cat": cat, "ph": "X", "ts": self._ts(start_ns),
                 "dur": max(0.0, (end_ns - start_ns) / 1e3), "pid": self.pid, "tid": tid}
        if args:
            event["args"] = args
        with self._lock:
            self.events.append(event)

    def node_event(self, node: Node, start_ns: int, end_ns: int, engine: str = "host") -> None:
        """One op's execution (the host engine's per-node hook calls this)."""
        self.span(node.name or node.op_type, start_ns, end_ns, cat=f"op,{engine}",
                  args={"op": node.qualified_op, "engine": engine,
                        "inputs": [i for i in node.inputs if i], "outputs": node.outputs})

    def to_dict(self) -> dict[str, Any]:
        meta: list[dict[str, Any]] = [
            {"name": "process_name", "ph": "M", "pid": self.pid, "tid": 0,
             "args": {"name": self.process_name}}
        ]
        for tid, name in self._threads.items():
            meta.append({"name": "thread_name", "ph": "M", "pid": self.pid, "tid": tid,
                         "args": {"name": name}})
        with self._lock:
            events = list(self.events)
        return {"traceEvents": meta + events, "displayTimeUnit": "ms"}

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the trace as JSON to ``path`` and return the path."""
        out = Path(path)
        out.write_text(json.dumps(self.to_dict()))
        return out


def profile_run(
    program: Program, feeds: Mapping[str, Any], path: str | os.PathLike[str], **run_kwargs: Any
) -> dict[str, np.ndarray]:
    """Run ``program`` once with a per-op Chrome trace written to ``path``; return the outputs.

    This is what ``nerve run --profile trace.json`` calls.
    """
    profiler = Profiler()
    outputs = program.run(feeds, profile=profiler, **run_kwargs)
    profiler.write(path)
    return outputs


__all__ = ["Profiler", "ProgramStats", "profile_run", "prometheus_text"]
