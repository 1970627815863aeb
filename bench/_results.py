"""Writing the benchmarks' outputs: one section of ``bench/RESULTS.md`` (the other sections
are left alone) and a JSON baseline under ``bench/baselines/``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
BASELINES = HERE / "baselines"


def write_section(heading: str, body: str, path: Path = RESULTS) -> None:
    """Put ``body`` (a section starting with the line ``heading``) into ``path``: in place of
    the section with that heading, up to the next ``## `` heading, or appended at the end."""
    current = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _: body + "\n", current).rstrip() + "\n"
    else:
        updated = current.rstrip() + "\n\n" + body
    path.write_text(updated)


def write_baseline(name: str, results: dict[str, Any]) -> Path:
    """Write ``results`` as ``bench/baselines/<name>.json``; returns its path."""
    BASELINES.mkdir(parents=True, exist_ok=True)
    path = BASELINES / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


# ---- the machine a benchmark ran on ---------------------------------------------------------

# The ISA features behind reduced-precision GEMM, in the order the headers list them.
LOWP_FEATURES = ("avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def feature_summary(features: Iterable[str]) -> str:
    """The reduced-precision ISA features in one line, e.g. ``avx512_bf16 yes, ... amx_int8 no``.

    >>> feature_summary(["avx512f", "avx512_bf16"])
    'avx512_bf16 yes, avx512_vnni no, amx_tile no, amx_bf16 no, amx_int8 no'
    """
    have = set(features)
    return ", ".join(f"{f} {'yes' if f in have else 'no'}" for f in LOWP_FEATURES)


def lowp_hardware_note(features: Iterable[str]) -> str:
    """Which hardware the bf16 / int8 numbers come from (AMX tiles or AVX-512 vectors): the
    issue's targets are stated for AMX, so a table measured without it must say so."""
    have = set(features)
    if {"amx_bf16", "amx_int8"} & have:
        return "This machine has AMX: bf16 and int8 can run on the AMX tile units."
    vector = [name for f, name in (("avx512_bf16", "AVX512-BF16 (vdpbf16ps)"),
                                   ("avx512_vnni", "AVX512-VNNI (vpdpbusd)")) if f in have]  # fmt: skip
    if not vector:
        return (
            "There is no AMX on this machine, nor AVX512-BF16 / VNNI: bf16 and int8 run "
            "on fp32 / plain integer code here, not AMX."
        )
    return (
        f"There is no AMX on this machine, so these are {' and '.join(vector)} numbers, "
        "not AMX; the issue's targets are stated for AMX."
    )


def segments_summary(segments: Sequence[Sequence[Any]]) -> str:
    """A plan's (engine, node count) segments per engine, e.g. ``native 120 nodes (1 segment),
    host 3 nodes (3 segments)`` (host segments in a bf16/int8 plan mean emulated ops)."""
    nodes: dict[str, int] = {}
    count: dict[str, int] = {}
    for engine, n in segments:
        nodes[engine] = nodes.get(engine, 0) + int(n)
        count[engine] = count.get(engine, 0) + 1
    return ", ".join(
        f"{e} {nodes[e]} node{'s' * (nodes[e] != 1)} ({count[e]} segment{'s' * (count[e] != 1)})"
        for e in nodes
    )


def loadavg() -> str:
    """The 1/5/15-minute load average (``?`` where unknown)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine_info(inherited: str | None, kept: bool) -> dict[str, Any]:
    """The machine and software versions, for a baseline's ``machine`` entry. ``inherited``:
    the OPENBLAS_CORETYPE found in the environment; ``kept``: whether the run kept it."""
    import datetime
    import importlib.metadata
    import os
    import platform

    import numpy as np

    from nerve.engines.native.toolchain import cpu_flags, cpu_vendor, find_toolchain

    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    tc = find_toolchain()
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "vendor": cpu_vendor(),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "features": sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "compiler": tc.version if tc else "none",
        "arch_flags": list(tc.arch_flags) if tc else [],
        "versions": {
            p: version(p) for p in ("onnxruntime", "openvino", "torch", "scipy-openblas32")
        },
        "openblas_coretype_inherited": inherited,
        "openblas_env_kept": kept,
        "openblas_core": openblas_core(),
    }


def openblas_core() -> str:
    """The kernel set OpenBLAS (the scipy-openblas32 wheel) runs, ``?`` where unknown."""
    try:
        import ctypes

        import scipy_openblas32 as sob

        fn = sob.dll.scipy_openblas_get_corename
        fn.restype = ctypes.c_char_p
        return str(fn().decode())
    except Exception:
        return "?"
