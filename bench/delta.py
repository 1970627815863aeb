"""Cache and delta compilation benchmark: compile once per structure, update weights in place.

    PYTHONPATH=src python bench/delta.py              # ResNet-50, BERT-base, GPT-2 124M
    PYTHONPATH=src python bench/delta.py --models bert --target host --no-write

For each model (random weights, generated locally by ``bench/models.py`` and cached under
``bench/models/``), in one run:

1. **cold compile** — ``nerve.compile`` with an empty program cache, in a fresh process:
   passes, engine build (for ``cpu``, the C compiler), weight arena. The ONNX import that
   precedes it is timed apart (a cache cannot skip it: the key is the model's structure).
2. **warm load from the disk cache** — the same, in another fresh process, served by the
   entry the cold compile left (no pass, no C compiler); and ``nerve.load`` of the program
   saved by ``Program.save`` (no ONNX import at all).
3. **delta update, all weights** — ``Program.update_weights`` with a new value for every Param
   (median of a few), against **memcpy** of the same number of bytes (the physical floor: one
   ``np.copyto`` between warm buffers) and against **ONNX Runtime**, which has no in-place
   update: re-creating its session from the patched model (the patching itself not counted).
4. **delta update, one layer** — the Params of the first transformer block (ResNet-50: the
   first bottleneck, BatchNorm folds re-derived), against memcpy of its bytes.

Each update is checked bit-identical (weight arena bytes) to compiling the model with the new
weights. Writes ``bench/baselines/delta.json`` and the ``## Cache and delta compilation``
section of ``bench/RESULTS.md`` (other sections are left alone). Targets (issue 4): delta of all
weights <= 2x the memcpy floor and >= 50x faster than ONNX Runtime's re-create for BERT-base
and GPT-2; one transformer layer <= 5 ms; warm load <= 10% of the cold compile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Cache and delta compilation"
# The first block of each network: its Params are the "one layer" update.
LAYER_SCOPES = {"resnet50": "layers.0", "bert": "blocks.0", "gpt2": "blocks.0"}
DEFAULT_MODELS = ["resnet50", "bert", "gpt2"]


def _env(cache_dir: str) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT / "bench"), os.environ.get(
        "PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "NERVE_CACHE_DIR": cache_dir, "NERVE_CACHE": "1"}


def _phase(phase: str, model: str, target: str, cache_dir: str, work: str,
           timeout: float = 900) -> dict[str, Any]:
    """Run one phase in a fresh Python process and return what it printed (JSON)."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--models", model,
         "--target", target, "--work", work],
        env=_env(cache_dir), capture_output=True, text=True, timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"phase {phase} of {model} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- phases (each runs in its own process) -----------------------------------------------------


def _model_path(name: str) -> Path:
    import models as bench_models  # bench/models.py

    return bench_models.export(bench_models.MODELS[name])


def phase_compile(name: str, target: str, work: Path, expect: str) -> dict[str, Any]:
    import nerve

    path = _model_path(name)
    t0 = time.perf_counter()
    graph = nerve.runtime.load_graph(path)
    t1 = time.perf_counter()
    program = nerve.compile(graph, target)
    t2 = time.perf_counter()
    if program.report.cache != expect:
        raise RuntimeError(f"expected a cache {expect}, got {program.report.cache}")
    if expect == "miss":
        program.save(work / f"{name}.nerve")
    return {"import_s": t1 - t0, "compile_s": t2 - t1,
            "passes_s": program.report.total_seconds if expect == "miss" else 0.0,
            "arena_bytes": program.arena.nbytes}


def phase_load(name: str, target: str, work: Path) -> dict[str, Any]:
    import nerve

    t0 = time.perf_counter()
    program = nerve.load(work / f"{name}.nerve")
    return {"load_s": time.perf_counter() - t0, "target": program.target}


def _new_weights(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    out = {}
    for name, w in weights.items():
        values = np.asarray(rng.standard_normal(w.shape, dtype=np.float32) * np.float32(0.02))
        if "var" in name:  # BatchNorm variances stay positive
            values = np.abs(values) + np.float32(0.5)
        out[name] = np.asarray(values, dtype=w.dtype)
    return out


def layer_params(proto: Any, scope: str, params: set[str]) -> list[str]:
    """Params read by the nodes of the torch module ``scope`` (from the exporter's metadata),
    plus Params named after it."""
    chosen = {p for p in params if p.startswith(scope + ".")}
    marker = f"/{scope}:"
    for node in proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        if marker in meta.get("namespace", ""):
            chosen.update(i for i in node.input if i in params)
    return sorted(chosen)


def _median_time(fn: Any, reps: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def _memcpy_s(nbytes: int, reps: int) -> float:
    src = np.ones(nbytes, np.uint8)
    dst = np.ones(nbytes, np.uint8)  # both written once: no page faults in the timing
    return _median_time(lambda: np.copyto(dst, src), reps)[0]


def phase_delta(name: str, target: str, reps: int) -> dict[str, Any]:
    import onnx

    path = _model_path(name)
    result, new = _delta(name, path, target, reps)  # the program is freed before ORT runs
    proto = onnx.load(str(path), load_external_data=True)
    result.update(_ort_recreate(proto, new))
    return result


def _delta(name: str, path: Path, target: str,
           reps: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    import onnx

    import nerve

    program = nerve.compile(path, target)
    weights = {k: np.array(v) for k, v in program.weights.items()}  # copies, not arena views
    new = _new_weights(weights)
    seconds, report = _median_time(lambda: program.update_weights(new), reps)
    # Bit-identity: the same arena as compiling the model with the new weights.
    graph = nerve.runtime.load_graph(path)
    graph.weights.update(new)
    identical = program.arena.contents() == nerve.compile(graph, target).arena.contents()
    proto = onnx.load(str(path), load_external_data=False)
    layer = layer_params(proto, LAYER_SCOPES[name], set(weights))
    layer_new = {k: weights[k] for k in layer}  # back to the first weights: a real change
    layer_s, layer_report = _median_time(lambda: program.update_weights(layer_new),
                                         max(reps, 5))
    result = {
        "params": len(weights),
        "param_bytes": int(sum(w.nbytes for w in weights.values())),
        "all_s": seconds,
        "all_bytes": report.bytes,
        "all_slots": len(report.slots),
        "all_memcpy_s": _memcpy_s(report.bytes, max(reps, 5)),
        "identical": identical,
        "layer_params": len(layer),
        "layer_names": layer,
        "layer_s": layer_s,
        "layer_bytes": layer_report.bytes,
        "layer_slots": len(layer_report.slots),
        "layer_memcpy_s": _memcpy_s(layer_report.bytes, 9),
    }
    return result, new


def _ort_recreate(proto: Any, new: dict[str, np.ndarray]) -> dict[str, Any]:
    """ONNX Runtime's cost for the same change: a session from the patched model."""
    from onnx import numpy_helper

    try:
        import onnxruntime as ort
    except ImportError:
        return {"ort_s": None, "ort_patch_s": None}
    t0 = time.perf_counter()
    for tensor in proto.graph.initializer:
        if tensor.name in new:
            tensor.CopyFrom(numpy_helper.from_array(new[tensor.name], tensor.name))
    for node in proto.graph.node:  # weights an exporter inlined as Constant nodes
        if node.op_type == "Constant" and node.output[0] in new:
            for attr in node.attribute:
                if attr.name == "value":
                    attr.t.CopyFrom(numpy_helper.from_array(new[node.output[0]]))
    data = proto.SerializeToString()
    t1 = time.perf_counter()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    t2 = time.perf_counter()
    del session
    return {"ort_s": t2 - t1, "ort_patch_s": t1 - t0}


# ---- the run -----------------------------------------------------------------------------------


def run_model(name: str, target: str, reps: int, work: Path, cache_dir: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": name}
    out["cold"] = _phase("cold", name, target, cache_dir, str(work))
    # Two fresh processes each, the faster kept: a shared machine adds noise, never speed.
    out["warm"] = min((_phase("warm", name, target, cache_dir, str(work)) for _ in range(2)),
                      key=lambda r: r["compile_s"])
    out["load"] = min((_phase("load", name, target, cache_dir, str(work)) for _ in range(2)),
                      key=lambda r: r["load_s"])
    out["delta"] = _phase("delta", name, target, cache_dir, str(work))
    return out


def _warm_up(target: str, cache_dir: str, work: str, memory_gb: float) -> None:
    """Build the native kernel library once (a per-toolchain cost, not a per-model one), and
    touch ``memory_gb`` of memory once: on a VM that backs guest memory lazily the first touch
    of a page costs far more than any later one, which would land on whichever measurement
    happened to get fresh pages."""
    if memory_gb > 0:
        block = np.ones(int(memory_gb * (1 << 30)), np.uint8)
        del block
    _phase("warmup", "mlp", target, cache_dir, work)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def table(results: dict[str, Any]) -> str:
    rows = []
    for r in results["models"]:
        cold, warm, load, d = r["cold"], r["warm"], r["load"], r["delta"]
        title = r["title"]
        cold_total = cold["import_s"] + cold["compile_s"]
        warm_ratio = warm["compile_s"] / cold["compile_s"]
        load_ratio = load["load_s"] / cold_total
        rows += [
            (f"{title}: cold compile", _ms(cold["compile_s"]),
             f"+ ONNX import {_ms(cold['import_s'])} = {_ms(cold_total)}; passes "
             f"{_ms(cold['passes_s'])}; arena {d['param_bytes'] / 1e6:.0f} MB of Params"),
            (f"{title}: warm load, disk cache hit", _ms(warm["compile_s"]),
             f"{warm_ratio:.0%} of the cold compile (target <= 10%); + ONNX import "
             f"{_ms(warm['import_s'])}"),
            (f"{title}: warm load, nerve.load(saved)", _ms(load["load_s"]),
             f"{load_ratio:.0%} of cold import + compile; no ONNX import"),
            (f"{title}: delta, all {d['params']} Params", _ms(d["all_s"]),
             f"{d['all_bytes'] / 1e6:.0f} MB into {d['all_slots']} slots; memcpy "
             f"{_ms(d['all_memcpy_s'])} -> {d['all_s'] / d['all_memcpy_s']:.2f}x the floor "
             f"(target <= 2x); bit-identical to a fresh compile: "
             f"{'yes' if d['identical'] else 'NO'}"),
            (f"{title}: ONNX Runtime re-create", _ms(d["ort_s"]),
             "session from the patched model" + (
                 f" (patching + serializing it: {_ms(d['ort_patch_s'])} more); nerve's delta "
                 f"is {d['ort_s'] / d['all_s']:.0f}x faster (target >= 50x); memcpy alone "
                 f"would be {d['ort_s'] / d['all_memcpy_s']:.0f}x"
                 if d["ort_s"] else "")),
            (f"{title}: delta, one layer ({d['layer_params']} Params)", _ms(d["layer_s"]),
             f"{d['layer_bytes'] / 1e6:.1f} MB into {d['layer_slots']} slots; memcpy "
             f"{_ms(d['layer_memcpy_s'])} (target <= 5 ms)"),
        ]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'measurement':<{width}} | result | note |", f"|{'-' * (width + 2)}|---|---|"]
    lines += [f"| {a:<{width}} | {v} | {n} |" for a, v, n in rows]
    return "\n".join(lines)


def verdict(results: dict[str, Any]) -> str:
    """Which targets the run met, by how much the others were missed, and why."""
    lines = ["Targets:"]
    models = {r["model"]: r for r in results["models"]}

    def ratio(r: dict[str, Any]) -> float:
        return float(r["delta"]["all_s"] / r["delta"]["all_memcpy_s"])

    floors = ", ".join(f"{r['title']} {ratio(r):.2f}x" for r in models.values())
    missed = [r for r in models.values() if ratio(r) > 2]
    lines.append(f"- delta of all weights <= 2x memcpy: {floors} — "
                 + ("met." if not missed else "missed by " + ", ".join(
                     f"{r['title']} ({ratio(r) / 2 - 1:.0%})" for r in missed) + "."))
    if "resnet50" in models and ratio(models["resnet50"]) > 2:
        lines.append(
            "  ResNet-50 (cpu target): after the copy into the arena, the native engine "
            "re-packs every conv weight into its kernel's layout (C packers on the engine's "
            "threads, as fast as a memcpy), so each conv weight is still written twice. "
            "Keeping only the packed copy as the weight's arena slot would bring it to the "
            "floor.")
    if "gpt2" in models:
        lines.append(
            "  GPT-2 writes its tied 154 MB embedding three times: as is (for the token "
            "lookup), transposed (the layout pass pre-transposes the LM head's MatMul "
            "operand; a strided move in numpy, ~4x a memcpy) and packed for the GEMM kernel. "
            "The other ~500 MB go at ~1-2x. Packing the LM head straight from the untransposed "
            "embedding would remove the transposed slot and its cost.")
    ort = [(r["title"], r["delta"]["ort_s"] / r["delta"]["all_s"],
            r["delta"]["ort_s"] / r["delta"]["all_memcpy_s"])
           for k, r in models.items() if k in ("bert", "gpt2") and r["delta"]["ort_s"]]
    if ort:
        lines.append(
            "- >= 50x faster than ONNX Runtime's re-create (BERT-base, GPT-2): "
            + ", ".join(f"{t} {a:.0f}x" for t, a, _ in ort)
            + (" — met." if all(a >= 50 for _, a, _ in ort) else
               " — missed: on this machine ONNX Runtime re-creates a session in well under "
               "the 3.7 s / 4.8 s the issue quotes, so even a bare memcpy of the same bytes "
               "is only " + ", ".join(f"{m:.0f}x" for _, _, m in ort)
               + " faster than it; the update itself runs at or near that floor (above)."))
    layers = [(r["title"], r["delta"]["layer_s"]) for k, r in models.items()
              if k in ("bert", "gpt2")]
    if layers:
        lines.append("- one transformer layer <= 5 ms: " + ", ".join(
            f"{t} {s * 1e3:.1f} ms" for t, s in layers)
            + (" — met." if all(s <= 0.005 for _, s in layers) else " — missed."))
    warm = [(r["title"], r["warm"]["compile_s"] / r["cold"]["compile_s"],
             r["load"]["load_s"] / (r["cold"]["import_s"] + r["cold"]["compile_s"]))
            for r in models.values()]
    lines.append(
        "- warm load <= 10% of the cold compile: disk-cache hit " + ", ".join(
            f"{t} {w:.0%}" for t, w, _ in warm) + "; `nerve.load` of a saved program vs "
        "import + cold compile " + ", ".join(f"{t} {v:.0%}" for t, _, v in warm)
        + (" — met." if all(w <= 0.10 for _, w, _ in warm) else
           " — missed. The passes take ~20 ms and the native engine compiles a model's C in "
           "one compiler run (well under a second here), so a cold compile is short; both "
           "paths then bake the weight arena (a fresh 100-650 MB block: populating its pages "
           "costs 0.1-0.4 s on this VM, more than copying into it) and the native engine "
           "packs its conv weights at build. Those costs, not the cache lookup (a few ms) or "
           "the plan decode (tens of ms), set the warm time."))
    return "\n".join(lines)


def write_results(results: dict[str, Any], text: str, notes: str) -> None:
    from _results import write_baseline, write_section  # bench/_results.py

    write_baseline("delta", results)
    write_section(SECTION, (
        f"{SECTION}\n\n`python bench/delta.py` on {results['machine']} ({results['date']}), "
        f"target `{results['target']}`, random weights.\n\n{text}\n\n{verdict(results)}"
        f"\n\n{notes}\n"
    ))


NOTES = """How to read it: a cold compile and a warm load both start from the imported model (the
ONNX import is shown apart: the cache key is the model's structure, so the model must be read
either way) and both end with the weight arena baked; the cache replaces the passes and the
engine build (for `cpu`, the C compiler) with a lookup. `nerve.load` skips the ONNX import too.
The memcpy floor is one `np.copyto` of the bytes the update wrote, between warm buffers.
"Bit-identical" compares the updated program's weight arena with a fresh compile's, byte for
byte (the unit tests compare run outputs too). ResNet-50's exporter folds BatchNorm into the
convolutions already, so its updates are copies here; BatchNorm re-folding is covered by the
CNN of `tests/unit/cache`. The warm phases run twice in fresh processes; the faster is shown."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--target", default="cpu", help="nerve target (default cpu)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the full update")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--touch-gb", type=float, default=4.0,
                        help="memory to touch once before measuring (see _warm_up; 0: none)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        return _run_phase(args)
    import models as bench_models  # exports the ONNX files once (cached under bench/models/)

    for name in args.models:
        bench_models.export(bench_models.MODELS[name])
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "target": args.target,
        "models": [],
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nerve-delta-") as tmp:
        cache_dir, work = str(Path(tmp) / "cache"), Path(tmp)
        _warm_up(args.target, cache_dir, str(work), args.touch_gb)
        for name in args.models:
            print(f"{name} ...", file=sys.stderr, flush=True)
            r = run_model(name, args.target, args.reps, work, cache_dir)
            r["title"] = bench_models.MODELS[name].title
            results["models"].append(r)
    results["seconds"] = time.perf_counter() - t0
    text = table(results)
    print(text)
    print(f"\n{verdict(results)}\n\n({results['seconds']:.0f} s)")
    if not args.no_write:
        write_results(results, text, NOTES)
    return 0


def _run_phase(args: argparse.Namespace) -> int:
    name, work = args.models[0], Path(args.work)
    if args.phase == "warmup":
        import nerve

        nerve.compile(_model_path(name), args.target, cache=False)
        result: dict[str, Any] = {}
    elif args.phase in ("cold", "warm"):
        result = phase_compile(name, args.target, work, "miss" if args.phase == "cold" else "hit")
    elif args.phase == "load":
        result = phase_load(name, args.target, work)
    else:
        result = phase_delta(name, args.target, args.reps)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
