"""Steps: the kernel calls a native segment makes, each able to emit its C.

A step is one kernel invocation (a GEMM with its fused epilogue, a convolution, a fused
elementwise loop, a softmax, a copy...). Steps know the tensors they read and write and how
much workspace they need; the :class:`Emitter` knows where each tensor lives (pointer-table
slot or scratch offset) and collects the helper functions steps generate, emitting each
distinct one once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nerve.engines.native.buffers import BufferPlan
from nerve.engines.native.elementwise import Chain, epilogue_function, loop_function
from nerve.ir import Node

PREFIX = "@P@"


class Emitter:
    """Pointer expressions and deduplicated helper functions for one segment."""

    def __init__(self, plan: BufferPlan) -> None:
        self.plan = plan
        self._functions: dict[str, str] = {}
        self.definitions: list[str] = []

    def ptr(self, name: str, ctype: str = "float") -> str:
        buf = self.plan.of(name)
        if buf.kind == "scratch":
            return f"(({ctype} *)(S + {buf.offset}))"
        return f"(({ctype} *)P[{buf.slot}])"

    def workspace(self, step: int, ctype: str = "float") -> str:
        return f"(({ctype} *)(S + {self.plan.workspaces[step]}))"

    def function(self, template: str) -> str:
        """Define the function in ``template`` (named ``@NAME@``) once; return its name."""
        name = self._functions.get(template)
        if name is None:
            name = f"{PREFIX}f{len(self._functions)}"
            self._functions[template] = name
            self.definitions.append(template.replace("@NAME@", name))
        return name


def _ints(values: list[int] | tuple[int, ...]) -> str:
    return "{" + ", ".join(f"{int(v)}LL" for v in values) + "}"


def describe(nodes: list[Node]) -> str:
    """A C comment naming the nodes a step computes."""
    names = ", ".join(f"{n.op_type} {n.name}" for n in nodes[:4])
    more = f" (+{len(nodes) - 4} more)" if len(nodes) > 4 else ""
    return "/* " + (names + more).replace("*/", "*_/") + " */"


@dataclass
class Step:
    nodes: list[Node]

    def reads(self) -> list[str]:
        raise NotImplementedError

    def writes(self) -> list[str]:
        raise NotImplementedError

    def workspace(self) -> int:
        """Bytes of scratch the kernel needs during this step only."""
        return 0

    def emit(self, em: Emitter, index: int) -> list[str]:
        raise NotImplementedError


# ---- elementwise ------------------------------------------------------------------------------


@dataclass
class ChainStep(Step):
    chain: Chain = field(default_factory=lambda: Chain(()))

    def reads(self) -> list[str]:
        return [o.name for o in self.chain.operands]

    def writes(self) -> list[str]:
        return [self.chain.out]

    def emit(self, em: Emitter, index: int) -> list[str]:
        fn = em.function(loop_function(self.chain, "@NAME@"))
        args = [
            "nt",
            *(em.ptr(o.name, o.ctype) for o in self.chain.operands),
            em.ptr(self.chain.out),
        ]
        return [f"{fn}({', '.join(args)});"]


@dataclass
class _WithEpilogue(Step):
    """A GEMM-like step whose output blocks run a fused elementwise chain."""

    chain: Chain = field(default_factory=lambda: Chain(()))
    groups: tuple[list[int], list[int], list[int]] = field(default_factory=lambda: ([], [], []))

    @property
    def out(self) -> str:
        return self.chain.out

    def epilogue(self, em: Emitter) -> tuple[str, str]:
        """(function name or NULL, args array name or NULL) plus the args declaration."""
        if not self.chain.ops:
            return "NULL", "NULL"
        text = epilogue_function(self.chain, "@NAME@", self.groups)
        assert text is not None, "lowering admitted an epilogue operand it cannot address"
        return em.function(text), "ea"

    def epilogue_args(self, em: Emitter) -> list[str]:
        if not self.chain.ops:
            return []
        ptrs = [em.ptr(self.out), *(em.ptr(o.name, o.ctype) for o in self.chain.operands)]
        return [f"const void *ea[] = {{{', '.join(f'(const void *){p}' for p in ptrs)}}};"]


@dataclass
class GemmStep(_WithEpilogue):
    a: str = ""
    b: str = ""
    batch: int = 1
    aoff: list[int] | None = None
    boff: list[int] | None = None
    ta: bool = False
    tb: bool = False
    m: int = 0
    n: int = 0
    k: int = 0
    alpha: float = 1.0
    bpack: str = ""  # B (a weight) packed into column tiles: the packed-panel kernel runs

    def reads(self) -> list[str]:
        return [self.a, self.bpack or self.b, *(o.name for o in self.chain.operands)]

    def writes(self) -> list[str]:
        return [self.out]

    def emit(self, em: Emitter, index: int) -> list[str]:
        from nerve.engines.native.elementwise import lit

        lines = ["{"]
        ao = bo = "NULL"
        if self.aoff is not None:
            lines.append(f"    static const int64_t ao[] = {_ints(self.aoff)};")
            ao = "ao"
        if self.boff is not None:
            lines.append(f"    static const int64_t bo[] = {_ints(self.boff)};")
            bo = "bo"
        lines += ["    " + s for s in self.epilogue_args(em)]
        ep, ea = self.epilogue(em)
        if self.bpack:
            lines.append(
                f"    nk_matmul_packed(nt, {self.m}LL, {self.n}LL, {self.k}LL, {em.ptr(self.a)}, "
                f"{em.ptr(self.bpack)}, {em.ptr(self.out)}, {ep}, {ea});"
            )
            lines.append("}")
            return lines
        lines.append(
            f"    nk_matmul(nt, {self.batch}LL, {ao}, {bo}, {int(self.ta)}, {int(self.tb)}, "
            f"{self.m}LL, {self.n}LL, {self.k}LL, {lit(self.alpha)}, {em.ptr(self.a)}, "
            f"{em.ptr(self.b)}, {em.ptr(self.out)}, {ep}, {ea});"
        )
        lines.append("}")
        return lines


@dataclass
class ConvStep(_WithEpilogue):
    x: str = ""
    w: str = ""
    bias: str = ""
    desc: tuple[int, ...] = ()  # N C H W O OH OW KH KW SH SW PT PL DH DW G
    wpack: str = ""  # the weights packed into A panels: the packed-panel kernel runs
    cvec: bool = False  # wpack is in the channel-vector layout: nk_conv2d_cvec runs

    def reads(self) -> list[str]:
        names = [self.x, self.wpack or self.w, *(o.name for o in self.chain.operands)]
        return [*names, self.bias] if self.bias else names

    def writes(self) -> list[str]:
        return [self.out]

    def workspace(self) -> int:
        if self.wpack:
            return 0  # the packed kernel packs input tiles into per-thread buffers
        _, c, h, w, _, oh, ow, kh, kw, sh, sw, pt, pl, _, _, g = self.desc
        pointwise = kh == kw == 1 and sh == sw == 1 and pt == pl == 0 and oh == h and ow == w
        if pointwise or c == g:
            return 0
        return (c // g) * kh * kw * oh * ow * 4

    def clamp(self, em: Emitter) -> tuple[str, str] | None:
        """C expressions (lo, hi) when the epilogue is one Relu or Clip of the conv's result:
        the kernels then clamp in registers as they store, with no pass over the output.
        Clip bounds that are tensors (a scalar weight) are read when the step runs."""
        from nerve.engines.native.elementwise import lit

        if len(self.chain.ops) != 1 or not self.chain.ops[0].args:
            return None
        op = self.chain.ops[0]
        if op.args[0] != ("acc", 0):
            return None
        if op.node.op_type == "Relu":
            return "0.0f", "INFINITY"
        if op.node.op_type != "Clip":
            return None
        bounds = []
        for i, default in ((1, "(-INFINITY)"), (2, "INFINITY")):
            kind, value = op.args[i] if i < len(op.args) else ("none", 0)
            if kind == "none":
                bounds.append(default)
            elif kind == "literal":
                if math.isnan(float(value)):
                    return None  # Clip to NaN is NaN everywhere: the epilogue says so
                bounds.append(lit(float(value)))
            elif kind == "operand":
                operand = self.chain.operands[int(value)]
                if operand.ctype != "float" or any(operand.strides):
                    return None  # not one float for the whole output
                bounds.append(f"{em.ptr(operand.name)}[0]")
            else:
                return None
        return bounds[0], bounds[1]

    def emit(self, em: Emitter, index: int) -> list[str]:
        lines = ["{", f"    static const nk_conv d = {_ints(self.desc)};"]
        bias = em.ptr(self.bias) if self.bias else "NULL"
        if self.wpack:
            kernel = "nk_conv2d_cvec" if self.cvec else "nk_conv2d_packed"
            call = (
                f"{kernel}(nt, &d, {em.ptr(self.x)}, {em.ptr(self.wpack)}, {bias}, "
                f"{em.ptr(self.out)}, @EP@);"
            )
        else:
            work = em.workspace(index) if self.workspace() else "NULL"
            call = (
                f"nk_conv2d(nt, &d, {em.ptr(self.x)}, {em.ptr(self.w)}, {bias}, "
                f"{em.ptr(self.out)}, {work}, @EP@);"
            )
        bounds = self.clamp(em)
        if bounds is None:
            lines += ["    " + s for s in self.epilogue_args(em)]
            ep, ea = self.epilogue(em)
            lines.append("    " + call.replace("@EP@", f"{ep}, {ea}, NULL"))
        elif all(b.endswith("[0]") is False for b in bounds):
            lines.append(f"    const nk_clamp cl = {{{bounds[0]}, {bounds[1]}}};")
            lines.append("    " + call.replace("@EP@", "NULL, NULL, &cl"))
        else:
            # Bounds read from tensors: a NaN bound makes Clip NaN, which only the epilogue
            # computes; every other value clamps in the kernel.
            lines.append(f"    const nk_clamp cl = {{{bounds[0]}, {bounds[1]}}};")
            lines += ["    " + s for s in self.epilogue_args(em)]
            ep, ea = self.epilogue(em)
            lines.append("    if (cl.lo == cl.lo && cl.hi == cl.hi)")
            lines.append("        " + call.replace("@EP@", "NULL, NULL, &cl"))
            lines.append("    else")
            lines.append("        " + call.replace("@EP@", f"{ep}, {ea}, NULL"))
        lines.append("}")
        return lines


# ---- other kernels ----------------------------------------------------------------------------


@dataclass
class CallStep(Step):
    """Kernel calls whose arguments are fixed at lowering time.

    ``template`` holds the C call(s), ``;``-separated, with ``{tN}`` placeholders for the Nth
    tensor of ``inputs + outputs`` (replaced by a pointer expression of type ``ctypes[name]``,
    float by default) and ``{work}`` for the workspace. ``prelude`` lines (static tables) are
    emitted verbatim before the calls.
    """

    template: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    ctypes: dict[str, str] = field(default_factory=dict)
    work_bytes: int = 0
    checked: bool = False  # the call returns nonzero on bad data (e.g. an index out of range)
    prelude: list[str] = field(default_factory=list)

    def reads(self) -> list[str]:
        return list(self.inputs)

    def writes(self) -> list[str]:
        return list(self.outputs)

    def workspace(self) -> int:
        return self.work_bytes

    def emit(self, em: Emitter, index: int) -> list[str]:
        names = {
            f"t{i}": em.ptr(n, self.ctypes.get(n, "float"))
            for i, n in enumerate([*self.inputs, *self.outputs])
        }
        if self.work_bytes:
            names["work"] = em.workspace(index)
        calls = [c.strip().format(**names) for c in self.template.split(";") if c.strip()]
        if self.checked:
            calls = [f"if ({c}) return {index + 1}" for c in calls]
        body = [*self.prelude, *(c + ";" for c in calls)]
        if len(body) == 1:
            return body
        return ["{", *("    " + s for s in body), "}"]
