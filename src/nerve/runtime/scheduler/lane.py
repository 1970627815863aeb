"""One engine's worker thread: picks the next execution (priority, deadline, fairness, batching
delay, power budget) from the programs it serves, and runs it."""

from __future__ import annotations

import heapq
import threading
import time
from typing import TYPE_CHECKING, Any

from nerve.runtime.scheduler.job import Callbacks, Job, JobStatus, fire_all
from nerve.runtime.scheduler.queue import ProgramQueue

if TYPE_CHECKING:
    from nerve.runtime.scheduler.runtime import Runtime


class Lane:
    """One engine's worker thread and the programs it serves."""

    def __init__(self, runtime: Runtime, engine: str) -> None:
        self.runtime = runtime
        self.engine = engine
        self.cond = threading.Condition(runtime._lock)
        self.entries: list[ProgramQueue] = []
        self.deadlines: list[tuple[float, int, Job]] = []  # min-heap for expiry
        self.served = 0
        self.running: list[Job] = []
        self.inline = False  # a caller's thread is running a job of this lane right now
        self.thread = threading.Thread(target=self._loop, name=f"nerve-{engine}", daemon=True)
        self.thread.start()

    # -- selection (under the lock) ---------------------------------------------------

    def _expire(self, now: float) -> list[tuple[Job, Callbacks]]:
        fired = []
        while self.deadlines and self.deadlines[0][0] < now:
            _, _, job = heapq.heappop(self.deadlines)
            if job._status is JobStatus.QUEUED:
                fired.append((job, self.runtime._finish_unrun(job, JobStatus.EXPIRED, now)))
        return fired

    def _select(self) -> ProgramQueue | None:
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

    def _others_waiting(self, entry: ProgramQueue) -> bool:
        return any(e is not entry and e.head() is not None for e in self.entries)

    def _next(self) -> tuple[ProgramQueue | None, list[Job], list[Any]]:
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
            entry.count_pending(-len(jobs))
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

    def _batch_wait_until(self, entry: ProgramQueue) -> float:
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
            fire_all(fired)
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
