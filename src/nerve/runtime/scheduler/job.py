"""A submitted run: :class:`Job`, a future with status, timestamps and an energy estimate."""

from __future__ import annotations

import enum
import logging
import math
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from nerve.errors import JobTimeoutError

if TYPE_CHECKING:
    from nerve.runtime.scheduler.queue import ProgramQueue

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

Callbacks = list[Callable[["Job"], None]]


class Job:
    """A submitted run: a future with status, timestamps and an energy estimate.

    Timestamps (``queued_at``, ``started_at``, ``finished_at``) are ``time.perf_counter()``
    seconds; ``queue_time``, ``run_time`` and ``latency`` are differences of them.
    """

    def __init__(self, entry: ProgramQueue, feeds: dict[str, np.ndarray],
                 out: dict[str, np.ndarray], rows: int, priority: int, deadline: float | None,
                 tag: Any, seq: int, queued_at: float) -> None:
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
        # Made by the first waiter (most jobs are done before anyone waits: inline runs, and
        # callers that use callbacks), so a job costs no Event unless one is needed.
        self._event: threading.Event | None = None
        self._callbacks: Callbacks = []

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
        if self.done():  # terminal states are set, with the result, before waiters are woken
            return True
        with self._entry.runtime._lock:
            if self._event is None:
                # Made under the lock that _set_terminal holds: either the job is done by now
                # or _fire (which runs after _set_terminal) will find and set this Event.
                self._event = threading.Event()
                if self.done():
                    self._event.set()
            event = self._event
        return event.wait(timeout)

    def result(self, timeout: float | None = None) -> dict[str, np.ndarray]:
        """The outputs; raises the run's error, JobCancelledError, JobExpiredError, or
        JobTimeoutError when ``timeout`` seconds pass first (the job itself goes on)."""
        if not self.wait(timeout):
            raise JobTimeoutError(
                f"job {self.id} ({self.program_name}) not finished after {timeout} s; status "
                f"{self.status}"
            )
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.wait(timeout):
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
                      error: BaseException | None, now: float) -> Callbacks:
        """Under the runtime lock: record the outcome; returns callbacks to fire outside it."""
        self._result = result
        self._error = error
        self.finished_at = now
        self.feeds = {}  # drop references to caller memory
        self.out = {}
        # Last: a thread that sees a terminal status (wait() checks it without the lock)
        # finds the outcome already in place.
        self._status = status
        callbacks, self._callbacks = self._callbacks, []
        return callbacks

    def _fire(self, callbacks: Callbacks) -> None:
        """Outside the lock: wake waiters, then run callbacks."""
        event = self._event
        if event is not None:
            event.set()
        for fn in callbacks:
            try:
                fn(self)
            except Exception:
                log.exception("job %s: done callback failed", self.id)

    def __repr__(self) -> str:
        return f"<nerve.Job {self.id} {self.program_name} {self.status} prio={self.priority}>"


def fire_all(finished: Iterable[tuple[Job, Callbacks]]) -> None:
    """Outside the lock: wake the waiters and run the callbacks of jobs that just finished."""
    for job, callbacks in finished:
        job._fire(callbacks)
