"""The workload API: ``Runtime.submit(program, feeds) -> Job`` and the scheduler behind it.

>>> import numpy as np, nerve
>>> from onnx import helper, TensorProto
>>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
>>> prog = nerve.compile(helper.make_model(g))
>>> with nerve.Runtime() as rt:
...     job = rt.submit(prog, {"x": np.array([-1, 2], np.float32)}, priority=1)
...     job.result(timeout=10)["y"], job.status
(array([0., 2.], dtype=float32), 'done')

How jobs are scheduled
----------------------
* **One worker per engine**: every program's ``engine`` names a lane; one thread per lane runs
  its jobs one execution at a time (engines parallelize inside a run).
* **Priority, then earliest deadline**: a larger ``priority`` runs first. Within a priority,
  jobs with a deadline run earliest-deadline-first, before jobs without one.
* **Expiry**: a job whose deadline passes before it starts is never run; its status is
  ``expired`` and ``result()`` raises JobExpiredError.
* **Admission control**: at most ``max_queue`` jobs wait at once; ``submit`` beyond that raises
  QueueFullError at once (the caller decides whether to retry, shed or slow down).
* **Fairness**: among programs whose next jobs tie (same priority, no deadline), the program
  served least recently goes first — round robin — so a flood of jobs for one program cannot
  starve another at the same priority.
* **Dynamic batching** (``register(program, batch=True)``): for programs compiled with a batch
  dimension — axis 0 of every input and output. Jobs carry 1..B rows (B the compiled batch);
  the worker packs queued jobs of that program into one execution, waiting at most
  ``max_queue_delay_us`` after the oldest job arrived for a fuller batch (never when other
  programs have work waiting, never past a queued job's deadline). nerve compiles static
  shapes, so a partial batch is **padded with zeros to the compiled batch**; register
  ``variants=[...]`` — the same model compiled for smaller batches — and the smallest variant
  that fits is used instead, to waste less work. Padding rows never reach a job: each job gets
  exactly its rows, equal to running it alone, provided rows are independent (true of
  inference graphs without cross-batch ops; nerve cannot check it, which is why batching is
  opt-in).
* **Power**: the runtime's power mode sets threads, precision preference and the default
  batching delay; ``power_budget_w`` holds jobs back (a token bucket over the energy model's
  estimates) so estimated power stays within budget. Each job reports ``energy_j``.

Feeds are read in place when the job runs (zero-copy): do not modify them until the job is
done.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nerve.errors import (
    InputError,
    JobCancelledError,
    JobExpiredError,
    JobTimeoutError,
    OutputError,
    QueueFullError,
    SchedulerError,
)
from nerve.runtime.monitor import Profiler, ProgramStats, prometheus_text
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
from nerve.runtime.tensors import as_output, to_numpy

log = logging.getLogger("nerve")


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    def __str__(self) -> str:
        return self.value


_TERMINAL = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})


class Job:
    """A submitted run: a future with status, timestamps and an energy estimate.

    Timestamps (``queued_at``, ``started_at``, ``finished_at``) are ``time.perf_counter()``
    seconds; ``queue_time``, ``run_time`` and ``latency`` are differences of them.
    """

    def __init__(self, entry: _Entry, feeds: dict[str, np.ndarray], out: dict[str, np.ndarray],
                 rows: int, priority: int, deadline: float | None, tag: Any, seq: int,
                 queued_at: float) -> None:
        self._entry = entry
        self.feeds = feeds
        self.out = out
        self.rows = rows
        self.priority = priority
        self.deadline = deadline
        self.tag = tag
        self.id = seq
        self.queued_at = queued_at
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.batch_size = 0  # jobs in the execution this job was part of
        self.energy_j: float | None = None  # estimated, this job's share of its execution
        self.measured_energy_j: float | None = None  # RAPL share where available
        self.throttled_s = 0.0
        self._status = JobStatus.QUEUED
        self._result: dict[str, np.ndarray] | None = None
        self._error: BaseException | None = None
        self._event = threading.Event()
        self._callbacks: list[Callable[[Job], None]] = []

    # -- the future ------------------------------------------------------------------

    @property
    def status(self) -> str:
        """queued, running, done, failed, cancelled or expired."""
        return self._status.value

    @property
    def program_name(self) -> str:
        return self._entry.name

    def done(self) -> bool:
        return self._status in _TERMINAL

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job is finished; False if ``timeout`` passed first."""
        return self._event.wait(timeout)

    def result(self, timeout: float | None = None) -> dict[str, np.ndarray]:
        """The outputs; raises the run's error, JobCancelledError, JobExpiredError, or
        JobTimeoutError when ``timeout`` seconds pass first (the job itself goes on)."""
        if not self._event.wait(timeout):
            raise JobTimeoutError(
                f"job {self.id} ({self.program_name}) not finished after {timeout} s; status "
                f"{self.status}"
            )
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self._event.wait(timeout):
            raise JobTimeoutError(f"job {self.id} not finished after {timeout} s")
        return self._error

    def cancel(self) -> bool:
        """Cancel the job if it has not started; True if it is (now) cancelled."""
        return self._entry.runtime._cancel(self)

    def add_done_callback(self, fn: Callable[[Job], None]) -> None:
        """Call ``fn(job)`` when the job finishes (at once if it already has)."""
        with self._entry.runtime._lock:
            if not self.done():
                self._callbacks.append(fn)
                return
        fn(self)

    @property
    def queue_time(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.queued_at

    @property
    def run_time(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def latency(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.queued_at

    # -- completion (the runtime calls these) ----------------------------------------

    def _sort_key(self) -> tuple[int, float, int]:
        return (-self.priority, math.inf if self.deadline is None else self.deadline, self.id)

    def __lt__(self, other: Job) -> bool:
        return self._sort_key() < other._sort_key()

    def _set_terminal(self, status: JobStatus, result: dict[str, np.ndarray] | None,
                      error: BaseException | None, now: float) -> list[Callable[[Job], None]]:
        """Under the runtime lock: record the outcome; returns callbacks to fire outside it."""
        self._status = status
        self._result = result
        self._error = error
        self.finished_at = now
        self.feeds = {}  # drop references to caller memory
        self.out = {}
        callbacks, self._callbacks = self._callbacks, []
        return callbacks

    def _fire(self, callbacks: list[Callable[[Job], None]]) -> None:
        """Outside the lock: wake waiters, then run callbacks."""
        self._event.set()
        for fn in callbacks:
            try:
                fn(self)
            except Exception:
                log.exception("job %s: done callback failed", self.id)

    def __repr__(self) -> str:
        return f"<nerve.Job {self.id} {self.program_name} {self.status} prio={self.priority}>"


@dataclass
class _Variant:
    """One compiled batch size of a batched program, with its reusable staging inputs."""

    program: Program
    batch: int
    staging: dict[str, np.ndarray] = field(default_factory=dict)


class _Entry:
    """A registered program: its queue, batching configuration and statistics."""

    def __init__(self, runtime: Runtime, program: Program, name: str, batch: bool,
                 max_queue_delay_us: int | None, variants: Sequence[Program]) -> None:
        self.runtime = runtime
        self.program = program
        self.name = name
        self.batch = batch
        self.explicit_delay_us = max_queue_delay_us
        self.heap: list[Job] = []
        self.rows_queued = 0  # rows of the jobs waiting (kept so batching never scans the heap)
        self.last_served = -1
        self.stats = ProgramStats(name)
        self.variants: list[_Variant] = []
        if batch:
            for prog in sorted([*variants, program], key=_batch_of):
                self.variants.append(_Variant(prog, _batch_of(prog)))
            _check_variants(program, [v.program for v in self.variants])
        self.max_batch = self.variants[-1].batch if batch else 1
        self.output_names = [o.name for o in program.outputs]

    @property
    def max_queue_delay_s(self) -> float:
        us = self.explicit_delay_us
        if us is None:
            us = self.runtime.power_mode.max_queue_delay_us
        return us / 1e6

    @property
    def batching(self) -> bool:
        return self.batch and self.runtime.power_mode.batching

    def head(self) -> Job | None:
        """The next job, dropping finished ones (cancelled/expired) from the front."""
        heap = self.heap
        while heap and heap[0]._status is not JobStatus.QUEUED:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def next_rows(self) -> int:
        """Rows the next execution would carry (an upper bound: packing stops at a job that
        does not fit), without scanning the queue."""
        return min(self.rows_queued, self.max_batch) if self.batching else 1

    def take(self, limit: int) -> list[Job]:
        """Pop the jobs of the next execution (at most ``limit`` rows; one job if unbatched)."""
        taken: list[Job] = []
        rows = 0
        while True:
            job = self.head()
            if job is None or (taken and rows + job.rows > limit):
                break
            heapq.heappop(self.heap)
            taken.append(job)
            rows += job.rows
            self.rows_queued -= job.rows
            if not self.batching:
                break
        return taken


def _batch_of(program: Program) -> int:
    shapes = [i.shape for i in program.inputs] + [o.shape for o in program.outputs]
    if not shapes or any(len(s) == 0 for s in shapes):
        raise SchedulerError(
            f"{program!r} cannot be batched: every input and output needs a batch axis 0"
        )
    sizes = {s[0] for s in shapes}
    if len(sizes) != 1:
        raise SchedulerError(
            f"{program!r} cannot be batched: axis 0 differs between inputs/outputs "
            f"({sorted(sizes)}); compile it with one batch size on axis 0 of every tensor"
        )
    return sizes.pop()


def _check_variants(main: Program, programs: list[Program]) -> None:
    def sig(p: Program) -> tuple[Any, ...]:
        return (tuple((i.name, i.dtype, i.shape[1:]) for i in p.inputs),
                tuple((o.name, o.dtype, o.shape[1:]) for o in p.outputs))

    for p in programs:
        if sig(p) != sig(main):
            raise SchedulerError(
                f"batch variant {p!r} does not match {main!r} apart from the batch size"
            )
    batches = [_batch_of(p) for p in programs]
    if len(set(batches)) != len(batches):
        raise SchedulerError(f"batch variants must have distinct batch sizes, got {batches}")


class _Lane:
    """One engine's worker thread and the programs it serves."""

    def __init__(self, runtime: Runtime, engine: str) -> None:
        self.runtime = runtime
        self.engine = engine
        self.cond = threading.Condition(runtime._lock)
        self.entries: list[_Entry] = []
        self.deadlines: list[tuple[float, int, Job]] = []  # min-heap for expiry
        self.served = 0
        self.running: list[Job] = []
        self.inline = False  # a caller's thread is running a job of this lane right now
        self.thread = threading.Thread(target=self._loop, name=f"nerve-{engine}", daemon=True)
        self.thread.start()

    # -- selection (under the lock) ---------------------------------------------------

    def _expire(self, now: float) -> list[tuple[Job, list[Callable[[Job], None]]]]:
        fired = []
        while self.deadlines and self.deadlines[0][0] < now:
            _, _, job = heapq.heappop(self.deadlines)
            if job._status is JobStatus.QUEUED:
                fired.append((job, self.runtime._finish_unrun(job, JobStatus.EXPIRED, now)))
        return fired

    def _select(self) -> _Entry | None:
        best: tuple[Any, ...] | None = None
        chosen = None
        for entry in self.entries:
            head = entry.head()
            if head is None:
                continue
            key = (-head.priority, head.deadline is None, head.deadline or 0.0,
                   entry.last_served, head.id)
            if best is None or key < best:
                best, chosen = key, entry
        return chosen

    def _others_waiting(self, entry: _Entry) -> bool:
        return any(e is not entry and e.head() is not None for e in self.entries)

    def _next(self) -> tuple[_Entry | None, list[Job], list[Any]]:
        """Wait for and take the next execution's jobs. ([], no entry) means: stop."""
        rt = self.runtime
        fired: list[Any] = []
        while True:
            now = time.perf_counter()
            fired += self._expire(now)
            if fired:
                return None, [], fired  # fire outside the lock first, then come back
            if (rt._paused and not rt._closing) or self.inline:
                self.cond.wait(self._until_next_deadline(now))
                continue
            entry = self._select()
            if entry is None:
                if rt._closing:
                    return None, [], []
                self.cond.wait(self._until_next_deadline(now))
                continue
            if (entry.batching and not rt._closing and entry.rows_queued < entry.max_batch
                    and not self._others_waiting(entry)):
                wait_until = self._batch_wait_until(entry)
                if now < wait_until:
                    self.cond.wait(wait_until - now)
                    continue
            if rt._governor is not None:
                delay = rt._governor.reserve(rt._execution_energy(entry, entry.next_rows()))
                if delay > 0:
                    head = entry.head()
                    if head is not None:
                        head.throttled_s += delay
                    with entry.stats.lock:
                        entry.stats.throttle_s += delay
                    self.cond.wait(delay)
                    continue
            jobs = entry.take(entry.max_batch)
            started = time.perf_counter()
            for job in jobs:
                job._status = JobStatus.RUNNING
                job.started_at = started
            rt._queued -= len(jobs)
            with entry.stats.lock:
                entry.stats.pending -= len(jobs)
            entry.last_served = self.served
            self.served += 1
            self.running = jobs
            return entry, jobs, []

    def idle(self) -> bool:
        """Nothing running and nothing queued (under the lock)."""
        return not self.running and not self.inline and all(
            e.head() is None for e in self.entries
        )

    def _until_next_deadline(self, now: float) -> float | None:
        """Seconds until the earliest queued deadline (so expiry is prompt even when idle)."""
        while self.deadlines and self.deadlines[0][2]._status is not JobStatus.QUEUED:
            heapq.heappop(self.deadlines)
        if not self.deadlines:
            return None
        return max(0.0, self.deadlines[0][0] - now) + 1e-4

    def _batch_wait_until(self, entry: _Entry) -> float:
        """How long the next job may wait for company: max_queue_delay after it was queued,
        but never so long that it would miss its deadline (the head has the earliest one of
        its priority)."""
        head = entry.head()
        assert head is not None
        until = head.queued_at + entry.max_queue_delay_s
        if head.deadline is not None:
            # Leave time to run before the deadline (the last execution's duration).
            recent = entry.stats.compute[-1] if entry.stats.compute else 0.0
            until = min(until, head.deadline - recent)
        return until

    # -- the loop ----------------------------------------------------------------------

    def _loop(self) -> None:
        rt = self.runtime
        while True:
            with self.cond:
                entry, jobs, fired = self._next()
            for job, callbacks in fired:
                job._fire(callbacks)
            if fired:
                continue
            if entry is None:
                return
            try:
                rt._execute(entry, jobs)
            finally:
                with self.cond:
                    self.running = []
                    self.cond.notify_all()


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
        self._entries: dict[int, _Entry] = {}
        self._by_name: dict[str, _Entry] = {}
        self._lanes: dict[str, _Lane] = {}
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
            for lane in self._lanes.values():
                lane.cond.notify_all()

    def compile(self, model: Any, target: str = "host", **options: Any) -> Program:
        """``nerve.compile`` with this power mode's thread count and precision preference."""
        from nerve.runtime.compile import compile as compile_program

        mode_options = self.power_mode.compile_options(target)
        return compile_program(model, target, **{**mode_options, **options})

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
            entry = _Entry(self, program, name, batch, max_queue_delay_us, variants)
            self._entries[id(program)] = entry
            self._by_name[name] = entry
            lane = self._lanes.get(program.engine)
            if lane is None:
                lane = self._lanes[program.engine] = _Lane(self, program.engine)
            lane.entries.append(entry)
            return name

    def _entry(self, program: Program) -> _Entry:
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
    ) -> Job:
        """Queue a run of ``program`` on ``feeds`` and return its Job at once.

        ``priority``: larger runs sooner. ``deadline_ms``: the job must *start* within this
        many milliseconds of submission or it expires unrun. ``out``: buffers for outputs.
        ``inline=True``: when the program's engine worker is idle with nothing queued (and the
        program is not batched and no power budget applies), run the job now in the calling
        thread — the same order the worker would choose, without a thread hand-off; the Job
        is done when submit returns. Otherwise it is queued as usual.
        Raises InputError for bad feeds and QueueFullError when ``max_queue`` jobs wait.
        """
        if not isinstance(program, Program):
            raise SchedulerError(f"submit needs a nerve.Program, got {type(program).__name__}")
        if deadline_ms is not None and not deadline_ms >= 0:
            raise SchedulerError(f"deadline_ms must be >= 0, got {deadline_ms}")
        entry = self._entry(program)
        prepared, out_arrays, rows = self._prepare(entry, feeds, out)
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
            job = Job(entry, prepared, out_arrays, rows, int(priority), deadline, tag,
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

    def _enqueue(self, entry: _Entry, lane: _Lane, job: Job) -> Job:
        """Under the lock: put ``job`` in its program's queue and wake the worker."""
        heapq.heappush(entry.heap, job)
        entry.rows_queued += job.rows
        self._queued += 1
        with entry.stats.lock:
            entry.stats.pending += 1
        if job.deadline is not None:
            heapq.heappush(lane.deadlines, (job.deadline, job.id, job))
        lane.cond.notify_all()
        return job

    def run(self, program: Program, feeds: Mapping[str, Any], timeout: float | None = None,
            **kwargs: Any) -> dict[str, np.ndarray]:
        """``submit(...).result(timeout)``."""
        return self.submit(program, feeds, **kwargs).result(timeout)

    def _prepare(
        self, entry: _Entry, feeds: Mapping[str, Any], out: Mapping[str, Any] | None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
        program = entry.program
        if not entry.batch:
            return program.prepare_feeds(feeds), program.prepare_out(out), 1
        if not isinstance(feeds, Mapping) or not feeds:
            return program.prepare_feeds(feeds), {}, 1  # raises the usual message
        first = program.inputs[0].name
        if first not in feeds:
            program.prepare_feeds(feeds)  # raises: missing input
        lead = to_numpy(feeds[first]).shape
        rows = lead[0] if lead else 0
        if not 1 <= rows <= entry.max_batch:
            raise InputError(
                f"input {first!r}: a batched job carries 1..{entry.max_batch} rows on axis 0, "
                f"got shape {lead}"
            )
        shapes = {i.name: (rows, *i.shape[1:]) for i in program.inputs}
        prepared = program.prepare_feeds(feeds, shapes)
        out_arrays: dict[str, np.ndarray] = {}
        for name, value in (out or {}).items():
            info = next((o for o in program.outputs if o.name == name), None)
            if info is None:
                raise OutputError(f"out= names unknown output {name!r}")
            out_arrays[name] = as_output(value, name, info.numpy_dtype, (rows, *info.shape[1:]))
        return prepared, out_arrays, rows

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

    def _finish_unrun(self, job: Job, status: JobStatus, now: float) -> list[Callable[[Job], None]]:
        """Under the lock: a queued job ends without running (cancelled or expired)."""
        entry = job._entry
        entry.rows_queued -= job.rows
        self._queued -= 1
        with entry.stats.lock:
            entry.stats.pending -= 1
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
            for lane in self._lanes.values():
                lane.cond.notify_all()

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
            for lane in self._lanes.values():
                lane.cond.notify_all()
            lanes = list(self._lanes.values())
        for job, callbacks in fired:
            job._fire(callbacks)
        for lane in lanes:
            if lane.thread is not threading.current_thread():  # close() from a done callback
                lane.thread.join(timeout)
        self._closed = True

    def _check_open(self) -> None:
        if self._closing:
            raise SchedulerError("the runtime is closed; create a new Runtime")

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- executing (worker thread, outside the lock) ----------------------------------

    def _execution_energy(self, entry: _Entry, rows: int) -> float:
        program = self._variant_for(entry, rows).program if entry.batch else entry.program
        return self.energy_model.cost(program).joules

    @staticmethod
    def _variant_for(entry: _Entry, rows: int) -> _Variant:
        for variant in entry.variants:
            if variant.batch >= rows:
                return variant
        return entry.variants[-1]

    def _execute(self, entry: _Entry, jobs: list[Job]) -> None:
        rows = sum(j.rows for j in jobs)
        start_ns = time.perf_counter_ns()
        start = start_ns / 1e9
        rapl0 = read_rapl_joules() if self._rapl else None
        results: list[dict[str, np.ndarray]] | None = None
        error: BaseException | None = None
        try:
            if entry.batch:
                variant = self._variant_for(entry, rows)
                program = variant.program
                results = self._run_batched(entry, variant, jobs)
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
        for job, callbacks in fired:
            job._fire(callbacks)

    def _run_batched(self, entry: _Entry, variant: _Variant,
                     jobs: list[Job]) -> list[dict[str, np.ndarray]]:
        program = variant.program
        rows = sum(j.rows for j in jobs)
        if len(jobs) == 1 and rows == variant.batch:
            job = jobs[0]  # a full batch on its own: run on the caller's memory directly
            return [program.run_prepared(job.feeds, entry.output_names, job.out, True)]
        if not variant.staging:
            variant.staging = {i.name: np.zeros(i.shape, i.numpy_dtype) for i in program.inputs}
        staging = variant.staging
        for name, buf in staging.items():
            offset = 0
            for job in jobs:
                buf[offset:offset + job.rows] = job.feeds[name]
                offset += job.rows
            buf[offset:] = 0  # padding rows: zeros, whatever the last batch left there
        outputs = program.run_prepared(staging, entry.output_names, {}, copy=False)
        results = []
        offset = 0
        for job in jobs:
            mine: dict[str, np.ndarray] = {}
            for name in entry.output_names:
                part = outputs[name][offset:offset + job.rows]
                target = job.out.get(name)
                if target is not None:
                    np.copyto(target, part)
                    mine[name] = target
                else:
                    mine[name] = part.copy()
            results.append(mine)
            offset += job.rows
        return results

    def _trace(self, entry: _Entry, jobs: list[Job], start_ns: int, end_ns: int) -> None:
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


__all__ = ["Job", "JobStatus", "Runtime", "default_runtime"]
