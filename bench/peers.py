"""nerve's native engine against ONNX Runtime, OpenVINO and PyTorch (fp32, batch 1).

    python bench/peers.py [--models resnet50,bert] [--threads 2] [--seconds 3]
                          [--vs ort,openvino,torch]

Generates the benchmark models with random weights (``bench/models.py``, cached under
``bench/models/``), compiles each for nerve's ``cpu`` target, creates the peer sessions, and
times them in the same process with interleaved rounds (see ``nerve bench``). Writes the
``## Native engine vs peers (fp32)`` section of ``bench/RESULTS.md`` (other sections are
left alone) and ``bench/baselines/peers.json`` with the machine's description.

OpenBLAS: an ``OPENBLAS_CORETYPE`` inherited from the environment pins OpenBLAS's kernels (some
sandboxes set ``Haswell``, i.e. AVX2 only). The benchmark removes it so nerve runs with the
kernels it picks for this CPU; ``--keep-openblas-env`` keeps it. Either way the JSON records
the value and the kernels OpenBLAS used.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
BASELINE = HERE / "baselines" / "peers.json"
SECTION = "## Native engine vs peers (fp32)"

# Issue 5's targets: nerve p50 / ONNX Runtime p50 in the same run.
TARGETS = {"resnet50": 1.3, "mobilenetv2": 1.3, "bert": 1.0, "gpt2": 1.0, "mlp": 1.5}
PEER_NAMES = {"ort": "onnxruntime", "openvino": "openvino", "torch": "torch"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet50,mobilenetv2,bert,gpt2,mlp")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per runtime")
    parser.add_argument("--vs", default="ort,openvino,torch")
    parser.add_argument("--keep-openblas-env", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    inherited = os.environ.get("OPENBLAS_CORETYPE")
    if inherited and not args.keep_openblas_env:
        del os.environ["OPENBLAS_CORETYPE"]  # before nerve loads OpenBLAS
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "src"))
    import models as bench_models

    from nerve.cli import _output as out
    from nerve.cli.bench import make_runners, measure, results_table

    peers = [p.strip() for p in args.vs.split(",") if p.strip()]
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    load_before = _loadavg()
    report: dict[str, Any] = {}
    for name in names:
        spec = bench_models.MODELS[name]
        out.emit(f"== {spec.title}")
        path = bench_models.export(spec)
        feeds = spec.make_inputs()
        module = None
        if "torch" in peers:
            try:
                module = spec.make_module()
            except ImportError:
                module = None
        runners, skipped = make_runners(str(path), feeds, args.threads, peers,
                                        torch_module=module)  # fmt: skip
        stats = measure(runners, seconds=args.seconds)
        out.emit_table(results_table(stats, spec.title))
        for peer, why in skipped.items():
            out.warn(f"{peer} skipped: {why}")
        report[name] = {
            "title": spec.title,
            "results": [s.as_dict() for s in stats],
            "skipped": skipped,
            "nerve_engines": runners[0].notes,
        }
        del runners, stats, module
    machine = _machine(inherited, args.keep_openblas_env)
    machine["loadavg_before"] = load_before
    machine["loadavg_after"] = _loadavg()
    settings = {"threads": args.threads, "batch": 1, "seconds_per_runtime": args.seconds,
                "peers": peers, "interleaved_rounds": 5}  # fmt: skip
    if args.no_write:
        return 0
    BASELINE.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(BASELINE.read_text()) if BASELINE.is_file() else {}
    models_json = previous.get("models", {}) if set(names) != set(TARGETS) else {}
    models_json.update(report)
    BASELINE.write_text(
        json.dumps({"machine": machine, "settings": settings, "models": models_json}, indent=1)
        + "\n"
    )
    _write_section(models_json, machine, settings)
    out.emit(f"wrote {RESULTS.relative_to(HERE.parent)} and {BASELINE.relative_to(HERE.parent)}")
    return 0


# ---- the results section ----------------------------------------------------------------------


def _p50(result: dict[str, Any], runtime: str) -> float | None:
    for r in result["results"]:
        if r["runtime"] == runtime:
            return float(r["p50_ms"])
    return None


def _fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _section(models: dict[str, Any], machine: dict[str, Any], settings: dict[str, Any]) -> str:
    lines = [
        SECTION,
        "",
        f"Generated by `python bench/peers.py` on {machine['date']}: {machine['cpu']}, "
        f"{settings['threads']} threads, batch 1, fp32, random weights. Latency is the p50 of "
        f"interleaved runs (about {settings['seconds_per_runtime']:g} s per runtime); ratios "
        "are nerve / peer (lower is better for nerve). Raw numbers, p90 and throughput: "
        "`bench/baselines/peers.json`.",
        "",
        "| model | nerve ms | ONNX Runtime ms | nerve / ORT | target | OpenVINO ms | nerve / OV "
        "| torch ms | nerve / torch | nerve compile s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in models.items():
        ours = _p50(result, "nerve")
        ort = _p50(result, "onnxruntime")
        ov = _p50(result, "openvino")
        pt = _p50(result, "torch")

        def ratio(peer: float | None, ours: float | None = ours) -> float | None:
            return None if ours is None or peer is None else ours / peer

        target = TARGETS.get(name)
        r_ort = ratio(ort)
        mark = ""
        if r_ort is not None and target is not None:
            mark = " ✓" if r_ort <= target else " ✗"
        compile_s = next(
            (r["compile_s"] for r in result["results"] if r["runtime"] == "nerve"), None
        )
        lines.append(
            f"| {result['title']} | {_fmt(ours, 3)} | {_fmt(ort, 3)} | {_fmt(r_ort)}{mark} | "
            f"≤ {_fmt(target, 1)} | {_fmt(ov, 3)} | {_fmt(ratio(ov))} | {_fmt(pt, 3)} | "
            f"{_fmt(ratio(pt))} | {_fmt(compile_s)} |"
        )
    skipped = {f"{m}: {p}": why for m, r in models.items() for p, why in r["skipped"].items()}
    lines.append("")
    if skipped:
        lines.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) + ".")
        lines.append("")
    lines.append(
        f"OpenBLAS kernels: {machine['openblas_core']} (inherited OPENBLAS_CORETYPE: "
        f"{machine['openblas_coretype_inherited'] or 'unset'}, "
        f"{'kept' if machine['openblas_env_kept'] else 'removed for the run'}). Load average "
        f"before/after: {machine['loadavg_before']} / {machine['loadavg_after']} "
        "(the machine is shared; other processes' load lands on both runtimes alike because "
        "the runs are interleaved)."
    )
    lines.append("")
    return "\n".join(lines)


def _write_section(
    models: dict[str, Any], machine: dict[str, Any], settings: dict[str, Any]
) -> None:
    from _results import write_section  # bench/_results.py

    write_section(SECTION, _section(models, machine, settings), RESULTS)


# ---- machine description ------------------------------------------------------------------


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _machine(inherited: str | None, kept: bool) -> dict[str, Any]:
    import importlib.metadata

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
        "openblas_core": _openblas_core(),
    }


def _openblas_core() -> str:
    try:
        import ctypes

        import scipy_openblas32 as sob

        fn = sob.dll.scipy_openblas_get_corename
        fn.restype = ctypes.c_char_p
        return fn().decode()
    except Exception:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
