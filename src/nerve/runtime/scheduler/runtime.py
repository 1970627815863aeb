"""The workload API: :class:`Runtime` (register, submit, cancel, pause, close, statistics) and
the process-wide :func:`default_runtime`. How jobs are scheduled: :mod:`nerve.runtime.scheduler`.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from nerve.errors import (
    JobCancelledError,
    JobExpiredError,
    QueueFullError,
    SchedulerError,
)
from nerve.runtime.monitor import Profiler, prometheus_text
from nerve.runtime.power import (
    EnergyModel,
    PowerGovernor,
    PowerMode,
    apply_threads,
    get_power_mode,
    rapl_available,
    read_rapl_joules,
)
from nerve.runtime.program import Program
from nerve.runtime.scheduler.batching import prepare_batched, run_batched
from nerve.runtime.scheduler.job import Callbacks, Job, JobStatus, fire_all
from nerve.runtime.scheduler.lane import Lane
from nerve.runtime.scheduler.queue import ProgramQueue


class Runtime:
    """Runs jobs for Programs: priorities, deadlines, batching, power, statistics.

    ``power_mode`` is ``"performance"``, ``"balanced"`` (default) or ``"efficiency"`` (see
    :mod:`nerve.runtime.power`); ``max_queue`` bounds waiting jobs (admission control);
    ``power_budget_w`` caps estimated power; ``paused=True`` queues without running until
    :meth:`resume`; ``profiler`` records per-job spans in a Chrome trace.
    """

    def __init__(
        self,
        power_mode: str | PowerMode = "balanced",
        *,
        max_queue: int = 1024,
        power_budget_w: float | None = None,
        energy_model: EnergyModel | None = None,
        paused: bool = False,
        profiler: Profiler | None = None,
    ) -> None:
        if max_queue < 1:
            raise SchedulerError(f"max_queue must be at least 1, got {max_queue}")
        self._lock = threading.RLock()
        self.power_mode = get_power_mode(power_mode)
        self.threads_applied = apply_threads(self.power_mode.resolved_threads())
        self.max_queue = max_queue
        self.energy_model = energy_model or EnergyModel()
        self._rapl = rapl_available()  # measured energy only where the counter is readable
        self._governor = PowerGovernor(power_budget_w) if power_budget_w is not None else None
        self.power_budget_w = power_budget_w
        self.profiler = profiler
        self._entries: dict[int, ProgramQueue] = {}
        self._by_name: dict[str, ProgramQueue] = {}
        self._lanes: dict[str, Lane] = {}
        self._queued = 0
        self._seq = itertools.count()
        self._paused = paused
        self._closing = False
        self._closed = False

    # -- configuration ---------------------------------------------------------------

    def set_power_mode(self, mode: str | PowerMode) -> None:
        """Switch power mode (threads, precision preference for new compiles, batching)."""
        with self._lock:
            self.power_mode = get_power_mode(mode)
            self.threads_applied = apply_threads(self.power_mode.resolved_threads())
            self._wake_lanes()

    def compile(self, model: Any, target: str = "host", **options: Any) -> Program:
        """``nerve.compile`` with this power mode's thread count and precision preference."""
        from nerve.runtime.compile import compile as compile_program

        mode_options = self.power_mode.compile_options(target)
        return compile_program(model, target, **{**mode_options, **options})

    @property
    def compile_count(self) -> int:
        """Compiles this process has run (cache hits and weight updates are not counted;
        see :mod:`nerve.runtime.budget`, which enforces each target's compile budget)."""
        from nerve.runtime.budget import compile_count

        return compile_count()

    def register(
        self,
        program: Program,
        name: str | None = None,
        *,
        batch: bool = False,
        max_queue_delay_us: int | None = None,
        variants: Sequence[Program] = (),
    ) -> str:
        """Register ``program`` (optional; ``submit`` registers unknown programs itself).

        ``name`` labels its statistics. ``batch=True`` enables dynamic batching: axis 0 of
        every input and output is the batch axis; ``variants`` are the same model compiled for
        other batch sizes (the largest one bounds a batch). Returns the name.
        """
        with self._lock:
            self._check_open()
            if id(program) in self._entries:
                raise SchedulerError(f"{program!r} is already registered")
            name = name or f"{program.graph.name or 'program'}-{program.key[:8]}"
            if name in self._by_name:
                name = f"{name}-{len(self._entries)}"
            entry = ProgramQueue(self, program, name, batch, max_queue_delay_us, variants)
            self._entries[id(program)] = entry
            self._by_name[name] = entry
            lane = self._lanes.get(program.engine)
            if lane is None:
                lane = self._lanes[program.engine] = Lane(self, program.engine)
            lane.entries.append(entry)
            return name

    def _entry(self, program: Program) -> ProgramQueue:
        entry = self._entries.get(id(program))
        if entry is None or entry.program is not program:
            self.register(program)
            entry = self._entries[id(program)]
        return entry

    # -- submitting ------------------------------------------------------------------

    def submit(
        self,
        program: Program,
        feeds: Mapping[str, Any],
        priority: int = 0,
        deadline_ms: float | None = None,
        tag: Any = None,
        out: Mapping[str, Any] | None = None,
        inline: bool = False,
        prepared: bool = False,
    ) -> Job:
        """Queue a run of ``program`` on ``feeds`` and return its Job at once.

        ``priority``: larger runs sooner. ``deadline_ms``: the job must *start* within this
        many milliseconds of submission or it expires unrun. ``out``: buffers for outputs.
        ``inline=True``: when the program's engine worker is idle with nothing queued (and the
        program is not batched and no power budget applies), run the job now in the calling
        thread — the same order the worker would choose, without a thread hand-off; the Job
        is done when submit returns. Otherwise it is queued as usual.
        ``prepared=True``: ``feeds`` and ``out`` are what ``program.prepare_feeds`` and
        ``program.prepare_out`` returned (callers that run the same buffers again and again
        validate them once); they are used as they are, not validated again, and must stay
        unchanged until the job is done. Ignored for batched programs.
        Raises InputError for bad feeds and QueueFullError when ``max_queue`` jobs wait.
        """
        if not isinstance(program, Program):
            raise SchedulerError(f"submit needs a nerve.Program, got {type(program).__name__}")
        if deadline_ms is not None and not deadline_ms >= 0:
            raise SchedulerError(f"deadline_ms must be >= 0, got {deadline_ms}")
        entry = self._entry(program)
        if prepared and not entry.batch:
            arrays, out_arrays, rows = dict(feeds), dict(out or {}), 1
        else:
            arrays, out_arrays, rows = self._prepare(entry, feeds, out)
        with self._lock:
            self._check_open()
            if self._queued >= self.max_queue:
                entry.stats.record_failure("rejected")
                raise QueueFullError(
                    f"the runtime queue is full ({self.max_queue} jobs waiting); retry later, "
                    "shed load, or create the Runtime with a larger max_queue"
                )
            now = time.perf_counter()
            deadline = None if deadline_ms is None else now + deadline_ms / 1e3
            job = Job(entry, arrays, out_arrays, rows, int(priority), deadline, tag,
                      next(self._seq), now)
            lane = self._lanes[program.engine]
            if (inline and not entry.batch and self._governor is None and not self._paused
                    and lane.idle()):
                lane.inline = True
                job._status = JobStatus.RUNNING
                job.started_at = now
            else:
                return self._enqueue(entry, lane, job)
        try:
            self._execute(entry, [job])
        finally:
            with self._lock:
                lane.inline = False
                # Wake the worker only for jobs queued meanwhile: a needless wake-up costs a
                # GIL hand-off per inline run.
                if not lane.idle() or self._closing:
                    lane.cond.notify_all()
        return job

    def _enqueue(self, entry: ProgramQueue, lane: Lane, job: Job) -> Job:
        """Under the lock: put ``job`` in its program's queue and wake the worker."""
        entry.push(job)
        self._queued += 1
        if job.deadline is not None:
            heapq.heappush(lane.deadlines, (job.deadline, job.id, job))
        lane.cond.notify_all()
        return job

    def run(self, program: Program, feeds: Mapping[str, Any], timeout: float | None = None,
            **kwargs: Any) -> dict[str, np.ndarray]:
        """``submit(...).result(timeout)``."""
        return self.submit(program, feeds, **kwargs).result(timeout)

    @staticmethod
    def _prepare(
        entry: ProgramQueue, feeds: Mapping[str, Any], out: Mapping[str, Any] | None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
        if entry.batch:
            return prepare_batched(entry, feeds, out)
        program = entry.program
        return program.prepare_feeds(feeds), program.prepare_out(out), 1

    # -- cancelling, pausing, closing -------------------------------------------------

    def _cancel(self, job: Job) -> bool:
        with self._lock:
            if job._status is JobStatus.CANCELLED:
                return True
            if job._status is not JobStatus.QUEUED:
                return False
            callbacks = self._finish_unrun(job, JobStatus.CANCELLED, time.perf_counter())
            self._lanes[job._entry.program.engine].cond.notify_all()
        job._fire(callbacks)
        return True

    def _finish_unrun(self, job: Job, status: JobStatus, now: float) -> Callbacks:
        """Under the lock: a queued job ends without running (cancelled or expired)."""
        entry = job._entry
        entry.rows_queued -= job.rows
        self._queued -= 1
        entry.count_pending(-1)
        entry.stats.record_failure(status.value)
        if status is JobStatus.CANCELLED:
            error: BaseException = JobCancelledError(
                f"job {job.id} ({entry.name}) was cancelled before it started"
            )
        else:
            late = (now - job.deadline) * 1e3 if job.deadline is not None else 0.0
            error = JobExpiredError(
                f"job {job.id} ({entry.name}) expired: its deadline passed {late:.3f} ms before "
                "it could start; it was not run"
            )
        return job._set_terminal(status, None, error, now)

    def pause(self) -> None:
        """Stop starting jobs (running ones finish); submissions still queue."""
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            self._wake_lanes()

    def close(self, cancel_pending: bool = False, timeout: float | None = 30.0) -> None:
        """Stop accepting jobs; finish queued ones (or cancel them), then stop the workers."""
        fired = []
        with self._lock:
            if self._closed:
                return
            self._closing = True
            self._paused = False
            if cancel_pending:
                now = time.perf_counter()
                for entry in self._entries.values():
                    for job in list(entry.heap):
                        if job._status is JobStatus.QUEUED:
                            fired.append((job, self._finish_unrun(job, JobStatus.CANCELLED, now)))
            self._wake_lanes()
            lanes = list(self._lanes.values())
        fire_all(fired)
        for lane in lanes:
            if lane.thread is not threading.current_thread():  # close() from a done callback
                lane.thread.join(timeout)
        self._closed = True

    def _wake_lanes(self) -> None:
        """Under the lock: let every lane re-check its queues and settings."""
        for lane in self._lanes.values():
            lane.cond.notify_all()

    def _check_open(self) -> None:
        if self._closing:
            raise SchedulerError("the runtime is closed; create a new Runtime")

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- executing (worker thread, outside the lock) ----------------------------------

    def _execution_energy(self, entry: ProgramQueue, rows: int) -> float:
        return self.energy_model.cost(entry.program_for(rows)).joules

    def _execute(self, entry: ProgramQueue, jobs: list[Job]) -> None:
        rows = sum(j.rows for j in jobs)
        start_ns = time.perf_counter_ns()
        start = start_ns / 1e9
        rapl0 = read_rapl_joules() if self._rapl else None
        results: list[dict[str, np.ndarray]] | None = None
        error: BaseException | None = None
        try:
            if entry.batch:
                variant = entry.variant_for(rows)
                program = variant.program
                results = run_batched(entry, variant, jobs)
            else:
                program = entry.program
                job = jobs[0]
                results = [program.run_prepared(job.feeds, entry.output_names, job.out, True)]
        except Exception as exc:  # a failure belongs to the jobs, never to the worker thread
            error = exc
            program = entry.program
        end_ns = time.perf_counter_ns()
        end = end_ns / 1e9
        rapl1 = read_rapl_joules() if rapl0 is not None else None
        joules = self.energy_model.cost(program).joules
        measured = (rapl1 - rapl0) if rapl0 is not None and rapl1 is not None else None
        entry.stats.record_execution(len(jobs), end - start, joules, measured)
        if self.profiler is not None:
            self._trace(entry, jobs, start_ns, end_ns)
        fired = []
        with self._lock:
            for i, job in enumerate(jobs):
                job.batch_size = len(jobs)
                job.energy_j = joules * job.rows / rows
                job.measured_energy_j = None if measured is None else measured * job.rows / rows
                # perf_counter() and perf_counter_ns() read the same clock.
                latency, queue = end - job.queued_at, (job.started_at or start) - job.queued_at
                if error is None and results is not None:
                    entry.stats.record_job(True, latency, queue, job.rows)
                    fired.append((job, job._set_terminal(JobStatus.DONE, results[i], None, end)))
                else:
                    entry.stats.record_job(False, latency, queue, job.rows)
                    fired.append((job, job._set_terminal(JobStatus.FAILED, None, error, end)))
        fire_all(fired)

    def _trace(self, entry: ProgramQueue, jobs: list[Job], start_ns: int, end_ns: int) -> None:
        assert self.profiler is not None
        for job in jobs:
            self.profiler.span(f"queued {entry.name}#{job.id}", int(job.queued_at * 1e9),
                               start_ns, cat="queue", args={"priority": job.priority,
                                                            "tag": repr(job.tag)})
        self.profiler.span(f"run {entry.name}", start_ns, end_ns, cat="job",
                           args={"jobs": [j.id for j in jobs],
                                 "rows": sum(j.rows for j in jobs)})

    # -- monitoring --------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per program: runs, errors/cancelled/expired/rejected, executions, rows, pending,
        latency/queue/compute percentiles (ms), batch sizes, energy (J), throttling (s)."""
        with self._lock:
            entries = list(self._entries.values())
        return {e.name: e.stats.snapshot() for e in entries}

    def prometheus(self) -> str:
        """:meth:`stats` as Prometheus text exposition."""
        return prometheus_text(self.stats())

    @property
    def queued(self) -> int:
        """Jobs waiting now, over all programs."""
        return self._queued

    def names(self) -> Iterable[str]:
        return list(self._by_name)


_DEFAULT: Runtime | None = None
_DEFAULT_LOCK = threading.Lock()


def default_runtime() -> Runtime:
    """The process-wide Runtime ``Program.submit`` uses (balanced mode), created on first use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT._closing:
            _DEFAULT = Runtime()
        return _DEFAULT
