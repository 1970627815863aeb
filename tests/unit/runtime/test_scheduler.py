"""Runtime.submit and the scheduler: order, expiry, cancellation, admission, batching,
concurrency, fairness, power budget, statistics. Every wait is bounded; nothing times speed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import nerve
from nerve.errors import (
    InputError,
    JobCancelledError,
    JobExpiredError,
    JobTimeoutError,
    KernelError,
    QueueFullError,
    SchedulerError,
)
from nerve.runtime.power import Energy, EnergyModel
from nerve.runtime.program import null_program
from nerve.runtime.scheduler import Job, Runtime
from tests.unit.runtime.models import affine_program, affine_relu, linear

WAIT = 30.0  # generous bound on every wait: a hang fails instead of blocking the suite


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(paused=True)
    yield rt
    rt.close(cancel_pending=True, timeout=WAIT)


def ones(n: int = 4, value: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full(n, value, np.float32)}


def run_order(jobs: list[Job]) -> list[Any]:
    for job in jobs:
        job.wait(WAIT)
    assert all(j.status == "done" for j in jobs)
    return [j.tag for j in sorted(jobs, key=lambda j: j.started_at or 0.0)]


def test_submit_returns_a_job_with_results_and_timestamps() -> None:
    program = affine_program(4)
    with Runtime() as rt:
        job = rt.submit(program, ones(4, 2.0), tag="a")
        result = job.result(WAIT)
    np.testing.assert_array_equal(result["y"], program.run(ones(4, 2.0))["y"])
    assert job.status == "done" and job.tag == "a"
    assert job.started_at is not None and job.finished_at is not None
    assert job.queued_at <= job.started_at <= job.finished_at
    assert job.latency is not None and job.latency >= 0
    assert job.energy_j is not None and job.energy_j > 0


def test_priority_order_then_fifo(runtime: Runtime) -> None:
    program = null_program(affine_relu(4))
    jobs = [runtime.submit(program, ones(), priority=p, tag=f"{p}-{i}")
            for i, p in enumerate([0, 5, 1, 5, 0, 9])]
    runtime.resume()
    assert run_order(jobs) == ["9-5", "5-1", "5-3", "1-2", "0-0", "0-4"]


def test_earliest_deadline_first_within_a_priority(runtime: Runtime) -> None:
    program = null_program(affine_relu(4))
    jobs = [
        runtime.submit(program, ones(), tag="none"),
        runtime.submit(program, ones(), deadline_ms=60_000, tag="late"),
        runtime.submit(program, ones(), deadline_ms=30_000, tag="early"),
        runtime.submit(program, ones(), priority=1, deadline_ms=90_000, tag="urgent"),
    ]
    runtime.resume()
    assert run_order(jobs) == ["urgent", "early", "late", "none"]


def test_expired_jobs_never_run() -> None:
    runs: list[int] = []
    program = null_program(affine_relu(4), on_run=lambda env: runs.append(1))
    rt = Runtime(paused=True)
    try:
        doomed = rt.submit(program, ones(), deadline_ms=1, tag="doomed")
        fine = rt.submit(program, ones(), deadline_ms=60_000, tag="fine")
        time.sleep(0.02)  # the 1 ms deadline is certainly past
        rt.resume()
        with pytest.raises(JobExpiredError, match=r"expired.*not run"):
            doomed.result(WAIT)
        fine.result(WAIT)
        assert doomed.status == "expired" and doomed.started_at is None
        assert len(runs) == 1  # only `fine` ran
        assert rt.stats()[doomed.program_name]["expired"] == 1
    finally:
        rt.close(timeout=WAIT)


def test_expiry_is_prompt_even_while_paused(runtime: Runtime) -> None:
    program = null_program(affine_relu(4))
    job = runtime.submit(program, ones(), deadline_ms=5)
    with pytest.raises(JobExpiredError):
        job.result(WAIT)  # the lane wakes at the deadline; no resume needed


def test_cancel_queued_job(runtime: Runtime) -> None:
    runs: list[int] = []
    program = null_program(affine_relu(4), on_run=lambda env: runs.append(1))
    keep = runtime.submit(program, ones())
    drop = runtime.submit(program, ones())
    assert drop.cancel() and drop.cancel()  # idempotent
    assert drop.status == "cancelled"
    runtime.resume()
    keep.result(WAIT)
    with pytest.raises(JobCancelledError):
        drop.result(WAIT)
    assert len(runs) == 1


def test_running_or_done_jobs_cannot_be_cancelled() -> None:
    started = threading.Event()
    release = threading.Event()

    def block(env: Any) -> None:
        started.set()
        release.wait(WAIT)

    program = null_program(affine_relu(4), on_run=block)
    with Runtime() as rt:
        job = rt.submit(program, ones())
        assert started.wait(WAIT)
        assert job.status == "running"
        assert not job.cancel()
        release.set()
        job.result(WAIT)
        assert not job.cancel() and job.status == "done"


def test_result_timeout_raises_and_the_job_goes_on(runtime: Runtime) -> None:
    job = runtime.submit(null_program(affine_relu(4)), ones())
    with pytest.raises(JobTimeoutError) as info:
        job.result(0.01)
    assert isinstance(info.value, TimeoutError)
    runtime.resume()
    job.result(WAIT)


def test_queue_full_is_refused_at_once() -> None:
    program = null_program(affine_relu(4))
    rt = Runtime(max_queue=3, paused=True)
    try:
        jobs = [rt.submit(program, ones()) for _ in range(3)]
        with pytest.raises(QueueFullError, match="queue is full"):
            rt.submit(program, ones())
        assert jobs[0].cancel()
        jobs.append(rt.submit(program, ones()))  # room again
        assert rt.stats()[jobs[0].program_name]["rejected"] == 1
        rt.resume()
        for job in jobs[1:]:
            job.result(WAIT)
    finally:
        rt.close(timeout=WAIT)


def test_bad_feeds_fail_at_submit(runtime: Runtime) -> None:
    program = affine_program(4)
    with pytest.raises(InputError, match="expected shape"):
        runtime.submit(program, {"x": np.zeros(5, np.float32)})
    with pytest.raises(SchedulerError, match="deadline_ms"):
        runtime.submit(program, ones(), deadline_ms=-1)


def test_a_failing_job_does_not_stop_the_worker() -> None:
    program = affine_program(4)

    def boom(node: Any, *args: Any) -> Any:
        raise KernelError("injected failure")

    bad = affine_program(4)
    exe = bad._executables[0]
    exe.steps[0] = (boom, exe.steps[0][1])  # type: ignore[attr-defined]
    with Runtime() as rt:
        failed = rt.submit(bad, ones())
        ok = rt.submit(program, ones())
        with pytest.raises(KernelError, match="injected"):
            failed.result(WAIT)
        ok.result(WAIT)
        assert failed.status == "failed"
        assert rt.stats()[failed.program_name]["errors"] == 1


def test_n_threads_by_m_jobs_none_lost_or_duplicated() -> None:
    threads, per_thread = 6, 40
    program = affine_program(4)
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    with Runtime(max_queue=threads * per_thread) as rt:

        def client(t: int) -> None:
            try:
                jobs = []
                for m in range(per_thread):
                    value = float(t * 1000 + m)
                    jobs.append((m, rt.submit(program, ones(4, value), priority=m % 3,
                                              tag=(t, m))))
                for m, job in jobs:
                    y = job.result(WAIT)["y"]
                    np.testing.assert_array_equal(y, program.run(ones(4, t * 1000 + m))["y"])
                    with lock:
                        seen.append(job.tag)
            except BaseException as exc:  # reported below; a thread must not die silently
                errors.append(exc)

        workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(WAIT)
        assert not any(w.is_alive() for w in workers)
        stats = rt.stats()
    assert not errors
    assert sorted(seen) == [(t, m) for t in range(threads) for m in range(per_thread)]
    (entry,) = stats.values()
    assert entry["runs"] == threads * per_thread and entry["pending"] == 0


def test_fairness_between_programs_at_one_priority(runtime: Runtime) -> None:
    flood = null_program(affine_relu(4))
    other = null_program(affine_relu(4))
    jobs = [runtime.submit(flood, ones(), tag="flood") for _ in range(20)]
    jobs += [runtime.submit(other, ones(), tag="other") for _ in range(3)]
    runtime.resume()
    order = run_order(jobs)
    # Round robin: the late program's three jobs run among the first six, not after twenty.
    assert [i for i, tag in enumerate(order) if tag == "other"] == [1, 3, 5]


def test_one_worker_per_engine() -> None:
    host = affine_program(4)
    null = null_program(affine_relu(4))
    names: set[str] = set()

    def record(env: Any) -> None:
        names.add(threading.current_thread().name)

    spy = null_program(affine_relu(4), on_run=record)
    with Runtime() as rt:
        for job in [rt.submit(p, ones()) for p in (host, null, spy, spy)]:
            job.result(WAIT)
        assert set(rt._lanes) == {"host", "null"}
    assert names == {"nerve-null"}


# --------------------------------------------------------------------------- batching


def test_batched_results_equal_one_by_one_results() -> None:
    batched = affine_program(4, batch=8)
    single = affine_program(4, batch=1)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(12)]
    rt = Runtime(paused=True)
    try:
        name = rt.register(batched, "affine8", batch=True, max_queue_delay_us=100_000)
        jobs = [rt.submit(batched, {"x": x}) for x in xs]
        rt.resume()
        for x, job in zip(xs, jobs):
            y = job.result(WAIT)["y"]
            assert y.shape == x.shape
            one_by_one = np.concatenate([single.run({"x": row[None]})["y"] for row in x])
            np.testing.assert_array_equal(y, one_by_one)
        stats = rt.stats()[name]
    finally:
        rt.close(timeout=WAIT)
    assert max(stats["batch_sizes"]) > 1  # jobs really were batched
    assert stats["rows"] == sum(len(x) for x in xs)
    assert stats["executions"] < len(xs)


def test_batching_with_matmul_rows_match_alone() -> None:
    batched = nerve.compile(linear(batch=4))
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(6)]
    rt = Runtime(paused=True)
    try:
        rt.register(batched, batch=True)
        jobs = [rt.submit(batched, {"x": x}) for x in xs]
        rt.resume()
        alone = [batched.run({"x": np.concatenate([x, np.zeros((3, 16), np.float32)])})["y"][:1]
                 for x in xs]
        for job, ref in zip(jobs, alone):
            np.testing.assert_allclose(job.result(WAIT)["y"], ref, rtol=1e-6, atol=1e-6)
    finally:
        rt.close(timeout=WAIT)


def test_partial_batches_use_the_smallest_variant_that_fits() -> None:
    runs: dict[int, int] = {}

    def counter(batch: int) -> Any:
        return lambda env: runs.__setitem__(batch, runs.get(batch, 0) + 1)

    big = null_program(affine_relu(4, batch=8), on_run=counter(8))
    small = null_program(affine_relu(4, batch=2), on_run=counter(2))
    rt = Runtime(paused=True)
    try:
        rt.register(big, batch=True, variants=[small], max_queue_delay_us=0)
        jobs = [rt.submit(big, {"x": np.ones((1, 4), np.float32)}) for _ in range(10)]
        rt.resume()
        for job in jobs:
            assert job.result(WAIT)["y"].shape == (1, 4)
    finally:
        rt.close(timeout=WAIT)
    assert runs == {8: 1, 2: 1}  # 8 rows, then the remaining 2 on the small variant


def test_batched_jobs_validate_rows_and_out(runtime: Runtime) -> None:
    batched = affine_program(4, batch=4)
    runtime.register(batched, batch=True)
    with pytest.raises(InputError, match=r"1\.\.4 rows"):
        runtime.submit(batched, {"x": np.ones((5, 4), np.float32)})
    with pytest.raises(InputError, match="expected shape"):
        runtime.submit(batched, {"x": np.ones((2, 3), np.float32)})
    out = np.empty((2, 4), np.float32)
    job = runtime.submit(batched, {"x": np.ones((2, 4), np.float32)}, out={"y": out})
    runtime.resume()
    assert job.result(WAIT)["y"] is out
    np.testing.assert_array_equal(out, batched.run({"x": np.ones((4, 4), np.float32)})["y"][:2])


def test_programs_without_a_batch_axis_cannot_be_batched(runtime: Runtime) -> None:
    with pytest.raises(SchedulerError, match="batch axis"):
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])], "scalar",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
        runtime.register(nerve.compile(helper.make_model(graph)), batch=True)
    with pytest.raises(SchedulerError, match="does not match"):
        runtime.register(affine_program(4, batch=4), batch=True,
                         variants=[affine_program(5, batch=2)])


# --------------------------------------------------------------------------- power, stats


def test_power_modes_set_threads_precision_and_batching() -> None:
    from nerve.runtime.power import POWER_MODES

    perf, bal, eff = (POWER_MODES[m] for m in ("performance", "balanced", "efficiency"))
    assert eff.resolved_threads() == 1 <= bal.resolved_threads() <= perf.resolved_threads()
    assert perf.max_queue_delay_us < bal.max_queue_delay_us < eff.max_queue_delay_us
    # The host target offers only its native precision: the preference falls back to it.
    assert eff.compile_options("host") == {"threads": 1}
    assert bal.precision_for("cpu") == "fp32"
    assert perf.precision_for("cpu") in ("bf16", "fp32")  # bf16 only where the CPU has it
    assert perf.precision_for("ane") == "fp16"
    with Runtime("efficiency") as rt:
        assert rt.power_mode is eff
        program = rt.compile(affine_relu(4))
        np.testing.assert_array_equal(program.run(ones())["y"],
                                      affine_program(4).run(ones())["y"])
        rt.set_power_mode("performance")
        assert rt.power_mode is perf
    with pytest.raises(nerve.NerveError, match="unknown power mode"):
        Runtime("turbo")


def test_energy_model_counts_matmul_flops_and_bytes() -> None:
    unfused = nerve.compile(linear(batch=4, k=16, n=8), fuse=False)
    energy = EnergyModel().cost(unfused)
    assert energy.flops == 2 * 4 * 16 * 8 + 4 * 8  # MatMul, then Relu
    assert energy.bytes == (4 * 16 + 16 * 8 + 4 * 8) * 4 + 2 * 4 * 8 * 4
    fused = EnergyModel().cost(nerve.compile(linear(batch=4, k=16, n=8)))
    assert fused.flops == energy.flops  # the same work ...
    assert fused.bytes < energy.bytes  # ... without the intermediate's round trip
    assert 0 < fused.joules < energy.joules
    assert EnergyModel().cost(null_program(linear(batch=4))).joules == 0


class FixedEnergy(EnergyModel):
    def cost(self, program: nerve.Program) -> Energy:
        return Energy(0.0, 0.0, 1.0)  # one joule per execution


def test_power_budget_bounds_the_energy_rate() -> None:
    program = null_program(affine_relu(4))
    budget_w = 50.0  # capacity 5 J (window 0.1 s): the 6th and later jobs must wait
    with Runtime(power_budget_w=budget_w, energy_model=FixedEnergy()) as rt:
        jobs = [rt.submit(program, ones()) for _ in range(10)]
        for job in jobs:
            job.result(WAIT)
        stats = rt.stats()[jobs[0].program_name]
    starts = sorted(j.started_at or 0.0 for j in jobs)
    capacity = budget_w * 0.1
    slack = budget_w * 0.005  # timestamps and the governor's clock reads differ by microseconds
    for i, start in enumerate(starts):
        # Energy started by then never exceeds the bucket plus what the budget refilled. An
        # unthrottled runtime starts all ten within milliseconds: 10 J > 5 J + slack.
        assert (i + 1) * 1.0 <= capacity + budget_w * (start - starts[0]) + slack
    assert stats["throttle_s"] > 0
    assert stats["energy_j"] == pytest.approx(10.0)
    assert all(j.energy_j == pytest.approx(1.0) for j in jobs)


def test_stats_and_prometheus_text() -> None:
    program = affine_program(4)
    with Runtime() as rt:
        name = rt.register(program, "affine")
        for i in range(5):
            rt.submit(program, ones(4, float(i))).result(WAIT)
        stats = rt.stats()["affine"]
        text = rt.prometheus()
    assert name == "affine"
    assert stats["runs"] == 5 and stats["executions"] == 5 and stats["errors"] == 0
    assert stats["batch_sizes"] == {1: 5}
    lat = stats["latency_ms"]
    assert 0 <= lat["p50"] <= lat["p90"] <= lat["p99"]
    assert stats["energy_j"] > 0 and stats["measured_energy_j"] in (None, stats["measured_energy_j"])
    assert 'nerve_inference_request_success_total{program="affine"} 5.0' in text
    assert 'nerve_inference_latency_seconds{program="affine",quantile="0.99"}' in text
    assert "# TYPE nerve_inference_pending_request_count gauge" in text


def test_prometheus_text_without_prometheus_client_matches() -> None:
    from nerve.runtime.monitor import prometheus_text

    program = affine_program(4)
    with Runtime() as rt:
        rt.register(program, "p")
        rt.submit(program, ones()).result(WAIT)
        stats = rt.stats()
    pytest.importorskip("prometheus_client")

    assert prometheus_text(stats, use_client=False) == prometheus_text(stats)


def test_runtime_trace_has_queue_and_run_spans() -> None:
    profiler = nerve.Profiler()
    program = affine_program(4)
    with Runtime(profiler=profiler) as rt:
        rt.submit(program, ones()).result(WAIT)
    cats = {e.get("cat") for e in profiler.to_dict()["traceEvents"]}
    assert {"queue", "job"} <= cats


def test_closed_runtime_refuses_jobs() -> None:
    rt = Runtime()
    rt.close()
    with pytest.raises(SchedulerError, match="closed"):
        rt.submit(affine_program(4), ones())


def test_inline_submit_runs_in_the_callers_thread_only_when_idle() -> None:
    threads: list[str] = []
    program = null_program(affine_relu(4),
                           on_run=lambda env: threads.append(threading.current_thread().name))
    rt = Runtime(paused=True)
    try:
        queued = rt.submit(program, ones())
        behind = rt.submit(program, ones(), inline=True)  # work is waiting: no jumping ahead
        assert queued.status == behind.status == "queued"
        rt.resume()
        behind.result(WAIT)
        assert threads == ["nerve-null", "nerve-null"]
        job = rt.submit(program, ones(), inline=True)  # idle now: runs here, done on return
        assert job.status == "done"
        assert threads[-1] == threading.current_thread().name
    finally:
        rt.close(timeout=WAIT)


def test_power_mode_caps_blas_threads() -> None:
    from nerve.runtime.power import _openblas_libraries, apply_threads

    if not _openblas_libraries():
        pytest.skip("no OpenBLAS loaded in this process")
    assert apply_threads(1)


def test_program_submit_uses_the_default_runtime() -> None:
    program = affine_program(4)
    job = program.submit(ones(4, 3.0), priority=2, tag="via-program")
    np.testing.assert_array_equal(job.result(WAIT)["y"], program.run(ones(4, 3.0))["y"])
    assert job.tag == "via-program" and job.priority == 2
