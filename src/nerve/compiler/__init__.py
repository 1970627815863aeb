"""The compiler: graph IR in, Plan out."""

from nerve.compiler.bake import BakeRecipe, BakeStep, run_recipes
from nerve.compiler.memplan import MemoryPlan, plan_memory
from nerve.compiler.pipeline import PASS_NAMES, compile
from nerve.compiler.plan import Plan, Segment
from nerve.compiler.report import CompileReport, PassRecord
from nerve.compiler.targets import Target, get_target

__all__ = [
    "PASS_NAMES",
    "BakeRecipe",
    "BakeStep",
    "CompileReport",
    "MemoryPlan",
    "PassRecord",
    "Plan",
    "Segment",
    "Target",
    "compile",
    "get_target",
    "plan_memory",
    "run_recipes",
]
