"""Dynamic batching: batch variants of a program, packing jobs' rows into one execution and
handing each job exactly its rows back.

nerve compiles static shapes, so a partial batch is padded with zeros to the compiled batch (or
the smallest registered variant that fits); padding rows never reach a job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from nerve.errors import InputError, OutputError, SchedulerError
from nerve.runtime.program import Program
from nerve.runtime.tensors import as_output, to_numpy

if TYPE_CHECKING:
    from nerve.runtime.scheduler.job import Job
    from nerve.runtime.scheduler.queue import ProgramQueue


@dataclass
class Variant:
    """One compiled batch size of a batched program, with its reusable staging inputs."""

    program: Program
    batch: int
    staging: dict[str, np.ndarray] = field(default_factory=dict)


def batch_of(program: Program) -> int:
    """The batch size of ``program``: axis 0, the same on every input and output."""
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


def variants_of(main: Program, others: Sequence[Program]) -> list[Variant]:
    """``main`` and its batch variants, smallest batch first, checked to be one model."""
    variants = [Variant(p, batch_of(p)) for p in sorted([*others, main], key=batch_of)]
    _check_variants(main, [v.program for v in variants])
    return variants


def _check_variants(main: Program, programs: list[Program]) -> None:
    def sig(p: Program) -> tuple[Any, ...]:
        return (tuple((i.name, i.dtype, i.shape[1:]) for i in p.inputs),
                tuple((o.name, o.dtype, o.shape[1:]) for o in p.outputs))

    for p in programs:
        if sig(p) != sig(main):
            raise SchedulerError(
                f"batch variant {p!r} does not match {main!r} apart from the batch size"
            )
    batches = [batch_of(p) for p in programs]
    if len(set(batches)) != len(batches):
        raise SchedulerError(f"batch variants must have distinct batch sizes, got {batches}")


def prepare_batched(
    entry: ProgramQueue, feeds: Mapping[str, Any], out: Mapping[str, Any] | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """A batched job's feeds and out buffers, checked, and how many rows (1..B) it carries."""
    program = entry.program
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


def run_batched(entry: ProgramQueue, variant: Variant,
                jobs: list[Job]) -> list[dict[str, np.ndarray]]:
    """Run ``jobs`` as one execution of ``variant``; each job's outputs, in order."""
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
