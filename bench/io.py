"""I/O and scheduling benchmark: zero-copy, cross-process runs, scheduler overhead, batching.

    PYTHONPATH=src python bench/io.py            # ~1-2 minutes on 2 cores
    PYTHONPATH=src python bench/io.py --quick    # a smoke run (seconds)

Prints a table, writes ``bench/baselines/io.json`` and the ``## I/O and scheduling`` section
of ``bench/RESULTS.md`` (other sections are left alone). What it measures (issue 7):

1. **copy vs zero-copy, 64 MiB input** — ``Program.run`` on the null engine (the run does
   nothing, so only input handling is timed): a matching array (read in place) against one that
   needs a copy (strided), and against a 4 KiB input to show the zero-copy cost does not grow
   with size. The same through a worker with a SharedTensor.
2. **cross-process latency, small model** — an affine+ReLU model on 256 floats: in-process
   ``Program.run`` against ``Client.run`` on SharedTensors in a worker process.
3. **scheduler overhead per job** — null program: ``Program.run`` against
   ``Runtime.submit().result()`` one at a time (two thread hand-offs), with ``inline=True``
   (the idle-engine fast path), and per job when 2000 jobs are queued at once.
4. **dynamic batching under steady load** — a MatMul+ReLU model (1024x1024, 4 MiB of weights) offered jobs at a
   fixed rate (1.5x what the unbatched program sustains) for a few seconds, with and without
   dynamic batching: throughput and p50/p99 latency.

Targets: scheduler overhead <= 50 µs per job; cross-process adds <= 100 µs over in-process for
small tensors; zero-copy 64 MiB adds no time proportional to its size.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import nerve  # noqa: E402
from nerve.runtime.program import null_program  # noqa: E402

OPSET = [helper.make_opsetid("", 17)]
SECTION = "## I/O and scheduling"


def relu_model(shape: list[int]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def sum_model(n: int) -> onnx.ModelProto:
    """A big input, a one-element output: timing it measures input handling only."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=1)],
        "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def affine_model(features: int) -> onnx.ModelProto:
    w = np.linspace(-1, 1, features, dtype=np.float32)
    b = np.linspace(0.5, -0.5, features, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "w"], ["m"]),
            helper.make_node("Add", ["m", "b"], ["a"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, features])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def linear_model(batch: int, k: int = 1024, n: int = 1024) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32) / 32
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 3) -> list[float]:
    """Seconds per call, ``repeat`` samples."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def p99(samples: list[float]) -> float:
    return float(np.percentile(samples, 99)) * 1e6


# --------------------------------------------------------------------------- 1. zero-copy


def bench_zero_copy(quick: bool, client: Any) -> dict[str, Any]:
    big_n, small_n = 16 << 20, 1 << 10  # 64 MiB and 4 KiB of float32
    big = null_program(sum_model(big_n))
    small = null_program(sum_model(small_n))
    x_big = np.random.default_rng(0).standard_normal(big_n).astype(np.float32)
    x_small = np.ones(small_n, np.float32)
    strided = np.empty(2 * big_n, np.float32)[::2]  # same values, but needs a copy
    strided[...] = x_big
    reps = 5 if quick else 30
    out: dict[str, Any] = {
        "zero_copy_4KiB_us": us(timed(lambda: small.run({"x": x_small}), reps * 10)),
        "zero_copy_64MiB_us": us(timed(lambda: big.run({"x": x_big}), reps * 10)),
        "copy_64MiB_us": us(timed(lambda: big.run({"x": strided}), reps)),
        "explicit_copy_64MiB_us": us(timed(lambda: big.run({"x": x_big.copy()}), reps)),
    }
    out["zero_copy_size_ratio"] = out["zero_copy_64MiB_us"] / out["zero_copy_4KiB_us"]
    # Across processes: a 64 MiB SharedTensor input against a 4 KiB one (1-element outputs).
    with tempfile.TemporaryDirectory() as tmp:
        for name, n in (("big", big_n), ("small", small_n)):
            path = os.path.join(tmp, f"{name}.onnx")
            onnx.save(sum_model(n), path)
            client.load(f"null_{name}", path, engine="null")
    with (
        nerve.SharedTensor.from_array(x_big) as xb,
        nerve.SharedTensor.from_array(x_small) as xs,
        nerve.SharedTensor.create((1,), np.float32) as y,
    ):
        small_remote = timed(
            lambda: client.run("null_small", {"x": xs}, {"y": y}, timeout=60), reps * 20, warmup=20
        )
        big_remote = timed(
            lambda: client.run("null_big", {"x": xb}, {"y": y}, timeout=60), reps * 20, warmup=20
        )
    out["worker_4KiB_us"] = us(small_remote)
    out["worker_64MiB_us"] = us(big_remote)
    return out


# --------------------------------------------------------------------------- 2. cross-process


def bench_cross_process(quick: bool, client: Any) -> dict[str, Any]:
    model = affine_model(256)
    program = nerve.compile(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "affine.onnx")
        onnx.save(model, path)
        client.load("affine", path)
    x = np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)
    reps = 200 if quick else 3000
    local = timed(lambda: program.run({"x": x}), reps, warmup=50)
    with (
        nerve.SharedTensor.from_array(x) as xs,
        nerve.SharedTensor.create((1, 256), np.float32) as ys,
    ):
        remote = timed(
            lambda: client.run("affine", {"x": xs}, {"y": ys}, timeout=60), reps, warmup=50
        )
        np.testing.assert_array_equal(ys.array, program.run({"x": x})["y"])
        sent_before = client.bytes_sent
        client.run("affine", {"x": xs}, {"y": ys}, timeout=60)
        request_bytes = client.bytes_sent - sent_before
    return {
        "in_process_p50_us": us(local),
        "in_process_p99_us": p99(local),
        "cross_process_p50_us": us(remote),
        "cross_process_p99_us": p99(remote),
        "added_p50_us": us(remote) - us(local),
        "request_bytes": request_bytes,
    }


# --------------------------------------------------------------------------- 3. scheduler


def bench_scheduler(quick: bool) -> dict[str, Any]:
    program = null_program(affine_model(64))
    feeds = {"x": np.ones((1, 64), np.float32)}
    prepared = program.prepare_feeds(feeds)
    names = [o.name for o in program.outputs]
    reps = 300 if quick else 5000
    direct = timed(lambda: program.run(feeds), reps, warmup=100)
    direct_prepared = timed(lambda: program.run_prepared(prepared, names, {}), reps, warmup=100)
    with nerve.Runtime(max_queue=10_000) as rt:
        sequential = timed(lambda: rt.submit(program, feeds).result(60), reps, warmup=100)
        inline = timed(lambda: rt.submit(program, feeds, inline=True).result(60), reps, warmup=100)
        n = 200 if quick else 2000
        start = time.perf_counter()
        jobs = [rt.submit(program, feeds) for _ in range(n)]
        for job in jobs:
            job.result(60)
        pipelined = (time.perf_counter() - start) / n
        queue_us = statistics.median((j.queue_time or 0.0) for j in jobs[-100:]) * 1e6
    return {
        "program_run_us": us(direct),
        "run_prepared_us": us(direct_prepared),
        "submit_result_us": us(sequential),
        "overhead_sequential_us": us(sequential) - us(direct),
        "submit_inline_us": us(inline),
        "overhead_inline_us": us(inline) - us(direct),
        "per_job_pipelined_us": pipelined * 1e6,
        "overhead_pipelined_us": pipelined * 1e6 - us(direct_prepared),
        "queue_time_tail_us": queue_us,
    }


# --------------------------------------------------------------------------- 4. batching


def steady_load(
    rt: nerve.Runtime, program: nerve.Program, rate: float, seconds: float, rows: int = 1
) -> dict[str, Any]:
    """Offer jobs at ``rate`` per second for ``seconds`` (open loop); measure what happens."""
    x = np.random.default_rng(2).standard_normal((rows, 1024)).astype(np.float32)
    jobs: list[Any] = []
    rejected = 0
    start = time.perf_counter()
    count = int(rate * seconds)
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        try:
            jobs.append(rt.submit(program, {"x": x}))
        except nerve.errors.QueueFullError:
            rejected += 1
    for job in jobs:
        job.result(120)
    elapsed = max(j.finished_at or 0.0 for j in jobs) - start
    lat = [j.latency or 0.0 for j in jobs]
    return {
        "offered_per_s": rate,
        "completed": len(jobs),
        "rejected": rejected,
        "throughput_per_s": len(jobs) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) * 1e3,
        "p99_ms": float(np.percentile(lat, 99)) * 1e3,
    }


def bench_batching(quick: bool) -> dict[str, Any]:
    single = nerve.compile(linear_model(1))
    batched = nerve.compile(linear_model(16))
    x = np.ones((1, 1024), np.float32)
    # Capacity of the unbatched program through the runtime (closed loop, pipelined).
    with nerve.Runtime(max_queue=100_000) as rt:
        n = 300 if quick else 3000
        start = time.perf_counter()
        for job in [rt.submit(single, {"x": x}) for _ in range(n)]:
            job.result(120)
        capacity = n / (time.perf_counter() - start)
    rate = 1.5 * capacity
    seconds = 0.5 if quick else 3.0
    with nerve.Runtime(max_queue=2048) as rt:
        unbatched = steady_load(rt, single, rate, seconds)
    with nerve.Runtime(max_queue=2048) as rt:
        rt.register(batched, "linear16", batch=True, max_queue_delay_us=500)
        with_batching = steady_load(rt, batched, rate, seconds)
        with_batching["mean_batch"] = _mean_batch(rt.stats()["linear16"]["batch_sizes"])
    return {"unbatched_capacity_per_s": capacity, "without": unbatched, "with": with_batching}


def _mean_batch(sizes: dict[int, int]) -> float:
    total = sum(sizes.values())
    return sum(k * v for k, v in sizes.items()) / total if total else 0.0


# --------------------------------------------------------------------------- report


def table(results: dict[str, Any]) -> str:
    z, c, s, b = (results[k] for k in ("zero_copy", "cross_process", "scheduler", "batching"))
    rows = [
        ("zero-copy run, 4 KiB input (null engine)", f"{z['zero_copy_4KiB_us']:.1f} µs", ""),
        (
            "zero-copy run, 64 MiB input",
            f"{z['zero_copy_64MiB_us']:.1f} µs",
            f"{z['zero_copy_size_ratio']:.2f}x the 4 KiB time (target: no growth with size)",
        ),
        (
            "copying run, 64 MiB input (strided: one conversion)",
            f"{z['copy_64MiB_us']:.0f} µs",
            f"{z['copy_64MiB_us'] / z['zero_copy_64MiB_us']:.0f}x zero-copy",
        ),
        ("caller copies 64 MiB first", f"{z['explicit_copy_64MiB_us']:.0f} µs", ""),
        ("worker run, 4 KiB SharedTensor (null engine)", f"{z['worker_4KiB_us']:.1f} µs", ""),
        (
            "worker run, 64 MiB SharedTensor",
            f"{z['worker_64MiB_us']:.1f} µs",
            f"{z['worker_64MiB_us'] / z['worker_4KiB_us']:.2f}x the 4 KiB time",
        ),
        (
            "small model in-process p50 / p99",
            f"{c['in_process_p50_us']:.1f} / {c['in_process_p99_us']:.1f} µs",
            "",
        ),
        (
            "small model via worker p50 / p99",
            f"{c['cross_process_p50_us']:.1f} / {c['cross_process_p99_us']:.1f} µs",
            f"adds {c['added_p50_us']:.1f} µs (target <= 100); {c['request_bytes']} B sent per run",
        ),
        ("Program.run, null engine", f"{s['program_run_us']:.1f} µs", ""),
        (
            "Runtime.submit().result(), one at a time",
            f"{s['submit_result_us']:.1f} µs",
            f"overhead {s['overhead_sequential_us']:.1f} µs/job (two thread hand-offs)",
        ),
        (
            "Runtime.submit(inline=True), engine idle",
            f"{s['submit_inline_us']:.1f} µs",
            f"overhead {s['overhead_inline_us']:.1f} µs/job (no hand-off)",
        ),
        (
            "Runtime, 2000 jobs queued at once",
            f"{s['per_job_pipelined_us']:.1f} µs/job",
            f"overhead {s['overhead_pipelined_us']:.1f} µs/job (target <= 50)",
        ),
    ]
    for label, key in (("without batching", "without"), ("with dynamic batching", "with")):
        r = b[key]
        extra = f", mean batch {r['mean_batch']:.1f}" if "mean_batch" in r else ""
        rows.append(
            (
                f"steady load {r['offered_per_s']:.0f}/s, {label}",
                f"{r['throughput_per_s']:.0f} jobs/s",
                f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, rejected {r['rejected']}"
                + extra,
            )
        )
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'measurement':<{width}} | result | note |", f"|{'-' * (width + 2)}|---|---|"]
    lines += [f"| {a:<{width}} | {v} | {n} |" for a, v, n in rows]
    return "\n".join(lines)


def write_results(results: dict[str, Any], text: str) -> None:
    from _results import write_baseline, write_section  # bench/_results.py

    write_baseline("io", results)
    write_section(SECTION, (
        f"{SECTION}\n\n`python bench/io.py` on {results['machine']} "
        f"({results['date']}); null engine where only I/O is timed.\n\n{text}\n"
    ))

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke test)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
    }
    t0 = time.perf_counter()
    with nerve.Worker() as worker, worker.connect() as client:
        results["zero_copy"] = bench_zero_copy(args.quick, client)
        results["cross_process"] = bench_cross_process(args.quick, client)
    results["scheduler"] = bench_scheduler(args.quick)
    results["batching"] = bench_batching(args.quick)
    results["seconds"] = time.perf_counter() - t0
    text = table(results)
    print(text)
    print(f"\n({results['seconds']:.0f} s)")
    if not args.no_write:
        write_results(results, text)
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    raise SystemExit(main())
