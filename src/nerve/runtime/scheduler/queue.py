"""One registered program's queue: its waiting jobs (a heap), batching configuration and
statistics."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nerve.runtime.monitor import ProgramStats
from nerve.runtime.program import Program
from nerve.runtime.scheduler.batching import Variant, variants_of
from nerve.runtime.scheduler.job import Job, JobStatus

if TYPE_CHECKING:
    from nerve.runtime.scheduler.runtime import Runtime


class ProgramQueue:
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
        self.variants: list[Variant] = variants_of(program, variants) if batch else []
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

    def variant_for(self, rows: int) -> Variant:
        """The smallest batch variant that holds ``rows`` (the largest if none does)."""
        for variant in self.variants:
            if variant.batch >= rows:
                return variant
        return self.variants[-1]

    def program_for(self, rows: int) -> Program:
        """The program an execution of ``rows`` rows runs."""
        return self.variant_for(rows).program if self.batch else self.program

    def count_pending(self, delta: int) -> None:
        """Add ``delta`` to the statistics' count of waiting jobs."""
        with self.stats.lock:
            self.stats.pending += delta

    def push(self, job: Job) -> None:
        """Under the runtime lock: queue ``job``."""
        heapq.heappush(self.heap, job)
        self.rows_queued += job.rows
        self.count_pending(+1)

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
