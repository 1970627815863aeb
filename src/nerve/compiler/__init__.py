"""The compiler: graph IR in, Plan out."""

from nerve.compiler.pipeline import compile
from nerve.compiler.plan import Plan, Segment
from nerve.compiler.report import CompileReport, PassRecord
from nerve.compiler.targets import Target, get_target

__all__ = ["CompileReport", "PassRecord", "Plan", "Segment", "Target", "compile", "get_target"]
