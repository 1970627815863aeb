"""Every error nerve raises, in one hierarchy.

All of them derive from :class:`NerveError`, so ``except nerve.NerveError`` catches anything
the runtime refuses. Messages name the culprit (node, input, dimension, file) and say what to
do about it.
"""

from __future__ import annotations

from collections.abc import Iterable


class NerveError(Exception):
    """Base class of every error nerve raises on purpose."""


class ModelFormatError(NerveError):
    """The model file or object is not a valid model (unparsable, inconsistent, unsupported IR)."""


class UnsupportedOperatorError(NerveError):
    """The model uses operators (or attribute values) nerve cannot run.

    ``unsupported`` maps each op type to the names of the nodes that use it, so a caller can
    print a complete list before anything runs.
    """

    def __init__(self, unsupported: dict[str, list[str]], detail: str = "") -> None:
        self.unsupported = {op: list(nodes) for op, nodes in unsupported.items()}
        parts = []
        for op, nodes in sorted(self.unsupported.items()):
            shown = ", ".join(repr(n) for n in nodes[:5])
            more = f" and {len(nodes) - 5} more" if len(nodes) > 5 else ""
            parts.append(f"{op} (nodes {shown}{more})")
        message = "unsupported operators: " + "; ".join(parts)
        if detail:
            message += f". {detail}"
        else:
            message += (
                ". Replace these ops in the exporter, or see docs/adding-an-op.md to add them."
            )
        super().__init__(message)


class UnsupportedAttributeError(UnsupportedOperatorError):
    """An operator nerve knows is used with an attribute value it does not implement."""

    def __init__(self, op_type: str, node: str, attribute: str, why: str) -> None:
        self.attribute = attribute
        super().__init__(
            {op_type: [node]},
            detail=f"Attribute {attribute!r} of node {node!r}: {why}",
        )


class ShapeError(NerveError):
    """A tensor shape is unknown, inconsistent, or cannot be inferred statically."""


class UnboundDimensionError(ShapeError):
    """A symbolic input dimension was not given a value at compile time."""

    def __init__(self, unbound: Iterable[tuple[str, int, str]]) -> None:
        self.unbound = list(unbound)
        listed = ", ".join(
            f"input {inp!r} axis {axis} ({sym!r})" for inp, axis, sym in self.unbound
        )
        example = ", ".join(
            f'"{inp}": (...)' for inp in dict.fromkeys(i for i, _, _ in self.unbound)
        )
        super().__init__(
            f"unbound dimensions: {listed}. nerve compiles static shapes; pass them as "
            f"shapes={{{example}}}"
        )


class GraphError(NerveError):
    """The IR graph breaks an invariant (order, dangling value, type mismatch)."""


class InputError(NerveError):
    """A run was given a missing, extra, or mis-shaped/mis-typed input."""


class WeightUpdateError(InputError):
    """``update_weights`` was given an unknown Param, a wrong shape or dtype, or weights the
    target baked in for good."""


class OutputError(NerveError):
    """A run was asked for an output the program does not have, or given a bad out= buffer."""


class CompileError(NerveError):
    """A compile step failed (a pass, or an engine's code generation/build)."""


class CompileBudgetError(CompileError):
    """The process has used up the target's compile budget (the ANE's ~119 compiles).

    Cache hits and weight updates do not count; restart the process or reuse programs.
    """


class KernelError(NerveError):
    """A kernel failed or produced a result that contradicts the IR (an internal bug)."""


class TargetError(NerveError):
    """An unknown target, or a target that cannot run on this machine."""


class SchedulerError(NerveError):
    """The runtime's scheduler refused or gave up on a job."""


class QueueFullError(SchedulerError):
    """Admission control: the runtime's queue is full; retry later or raise ``max_queue``."""


class JobCancelledError(SchedulerError):
    """The job was cancelled before it started; it never ran."""


class JobExpiredError(SchedulerError):
    """The job's deadline passed before it could start; it never ran."""


class JobTimeoutError(SchedulerError, TimeoutError):
    """Waiting for a job's result took longer than the caller's timeout (the job goes on)."""


class SharedTensorError(NerveError):
    """A shared-memory tensor request is invalid: bad name, size, offset, dtype or header."""


class SharedTensorBusyError(SharedTensorError):
    """A SharedTensor is in use by a run and cannot be written until the run completes."""


class WorkerError(NerveError):
    """The worker process could not be started or reached, or it refused a request."""


class RestrictionError(CompileError):
    """The model breaks restrictions of the target; ``diagnostics`` lists them (errors)."""

    def __init__(self, message: str, diagnostics: list | None = None) -> None:
        super().__init__(message)
        self.diagnostics = list(diagnostics or [])
