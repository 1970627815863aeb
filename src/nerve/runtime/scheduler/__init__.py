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

Modules: :mod:`.runtime` (the Runtime: submit, cancel, close, executing), :mod:`.job` (the Job
future), :mod:`.queue` (one program's queue), :mod:`.lane` (one engine's worker thread and
how it picks the next execution), :mod:`.batching` (batch variants, packing and unpacking rows).
"""

from nerve.runtime.scheduler.job import Job, JobStatus
from nerve.runtime.scheduler.runtime import Runtime, default_runtime

__all__ = ["Job", "JobStatus", "Runtime", "default_runtime"]
