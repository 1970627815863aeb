"""Delta compilation: update_weights is bit-identical to a fresh compile (DESIGN invariant 2),
touches only the slots of the Params it changes, checks everything first, and never lets a
run see a mix of old and new weights."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from onnx import ModelProto

import nerve
from nerve.errors import WeightUpdateError
from nerve.ir import DType, Graph, Node, TensorType
from nerve.runtime.arena import ALIGN
from nerve.runtime.program import null_program
from nerve.runtime.safetensors import write_tensors
from tests.unit.cache.models import MODELS, add_weight, weights_of

TARGETS = ["host", "cpu"]


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a
    )


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list(MODELS))
def test_update_is_bit_identical_to_a_fresh_compile(name: str, target: str) -> None:
    build, inputs = MODELS[name]
    x = inputs(0)
    program = nerve.compile(build(0), target, cache=False)
    before = program.run(x)
    report = program.update_weights(weights_of(build(1)))
    fresh = nerve.compile(build(1), target, cache=False)
    assert _same(program.run(x), fresh.run(x))
    assert not _same(before, fresh.run(x))  # the weights did change the result
    assert set(report.params) == set(program.weights)
    # The arena holds the same bytes, at the same offsets, as the fresh compile's.
    assert program.arena.layout == fresh.arena.layout
    assert program.arena.contents() == fresh.arena.contents()


def test_batchnorm_folding_is_re_derived(tmp_path: Path) -> None:
    build, inputs = MODELS["cnn"]
    program = nerve.compile(build(0), cache=False)
    folded = [s for s, r in program.plan.bake_recipes.items()
              if any(step.op.startswith("bn_fold") for step in r.steps)]
    assert folded, "the CNN's BatchNorms should be folded into its convolutions"
    w = weights_of(build(0))
    w["block/bn1.running_var"] = w["block/bn1.running_var"] * 4.0
    report = program.update_weights({"block/bn1.running_var": w["block/bn1.running_var"]})
    # running_var feeds both the folded weight and the folded bias of conv1, nothing else.
    assert sorted(report.slots) == sorted(
        s for s in folded if "block/bn1.running_var" in program.plan.bake_recipes[s].sources
    )
    assert len(report.slots) == 2
    fresh = nerve.compile(_with_weights(build(0), w), cache=False)
    assert _same(program.run(inputs(0)), fresh.run(inputs(0)))


def _with_weights(model: ModelProto, weights: dict[str, np.ndarray]) -> Graph:
    from nerve.frontend.onnx import load_onnx

    graph = load_onnx(model)
    graph.weights.update(weights)
    return graph


@pytest.mark.parametrize("param", ["block/bn1.running_var", "head/fc.weight", "down/conv.bias"])
def test_updating_one_param_touches_only_its_slots(param: str) -> None:
    build, _ = MODELS["cnn"]
    program = nerve.compile(build(0), cache=False)
    arena = program.arena
    before = np.frombuffer(arena.contents(), np.uint8)
    new = np.asarray(program.weights[param]) + 1.0
    report = program.update_weights({param: new.astype(np.float32)})
    after = np.frombuffer(arena.contents(), np.uint8)
    expected = {s for s in arena.layout if param in arena.recipes[s].sources}
    assert set(report.slots) == expected and expected
    assert report.bytes >= sum(arena.layout[s].nbytes for s in expected)
    changed = np.flatnonzero(before != after)
    inside = np.zeros(len(before), bool)
    for s in expected:
        slot = arena.layout[s]
        inside[slot.offset : slot.offset + slot.nbytes] = True
        assert not np.array_equal(before[slot.offset : slot.offset + slot.nbytes],
                                  after[slot.offset : slot.offset + slot.nbytes]), s
    assert inside[changed].all(), "bytes outside the Param's slots changed"


def test_slots_are_aligned_read_only_views_of_one_arena() -> None:
    build, _ = MODELS["cnn"]
    program = nerve.compile(build(0), cache=False)
    arena = program.arena
    for name, view in arena.slots.items():
        assert arena.address(name) % ALIGN == 0
        assert view.ctypes.data == arena.address(name)
        assert not view.flags.writeable
        with pytest.raises(ValueError):
            view[...] = 0
    assert program.plan.graph.weights["head/fc.weight"] is program.weights["head/fc.weight"]


def test_errors_name_the_param_and_change_nothing() -> None:
    build, _ = MODELS["cnn"]
    program = nerve.compile(build(0), cache=False)
    before = program.arena.contents()
    good = np.zeros((10,), np.float32)
    cases = {
        "head/fc.bias_typo": (good, "not a Param of the program (did you mean 'head/fc.bias'"),
        "head/fc.bias": (np.zeros((11,), np.float32), "Param 'head/fc.bias' is float32[10]"),
        "head/fc.weight": (np.zeros((10, 16), np.float64), "got float64[10, 16]"),
        "stem/conv.weight@bn_fold_weight": (good, "weight slot the compiler derived from"),
    }
    for name, (value, words) in cases.items():
        with pytest.raises(WeightUpdateError) as info:
            program.update_weights({"head/fc.bias": good, name: value})
        assert words in str(info.value), str(info.value)
        assert "Nothing was changed" in str(info.value)
    assert program.arena.contents() == before


def test_several_problems_are_listed_together() -> None:
    program = nerve.compile(add_weight(), cache=False)
    with pytest.raises(WeightUpdateError) as info:
        program.update_weights({"nope": np.zeros(4, np.float32), "w": np.zeros(3, np.float32)})
    assert "'nope'" in str(info.value) and "Param 'w'" in str(info.value)


def test_unread_param_is_reported_not_ignored() -> None:
    program = nerve.compile(add_weight(), cache=False)
    with pytest.warns(RuntimeWarning, match="not read by the compiled program"):
        report = program.update_weights({"unused": np.full(4, 7.0, np.float32),
                                         "w": np.ones(4, np.float32)})
    assert report.unused == ["unused"]
    assert "not read by the program: unused" in str(report)
    assert np.array_equal(program.weights["unused"], np.full(4, 7.0, np.float32))
    x = np.zeros(4, np.float32)
    assert np.array_equal(program.run({"x": x})["y"], np.ones(4, np.float32))


def test_update_from_a_safetensors_file(tmp_path: Path) -> None:
    build, inputs = MODELS["transformer"]
    program = nerve.compile(build(0), cache=False)
    path = tmp_path / "w.safetensors"
    write_tensors(path, weights_of(build(2)))
    program.update_weights(path)
    fresh = nerve.compile(build(2), cache=False)
    assert _same(program.run(inputs(0)), fresh.run(inputs(0)))


def test_safetensors_dtype_mismatch_names_the_param(tmp_path: Path) -> None:
    program = nerve.compile(add_weight(), cache=False)
    path = tmp_path / "w.safetensors"
    write_tensors(path, {"w": np.zeros(4, np.float16)})
    with pytest.raises(WeightUpdateError, match="Param 'w' is float32\\[4\\], the file stores it"):
        program.update_weights(path)


def test_update_from_an_onnx_model_of_the_same_structure() -> None:
    build, inputs = MODELS["cnn"]
    program = nerve.compile(build(0), cache=False)
    program.update_weights(build(3))
    assert _same(program.run(inputs(0)), nerve.compile(build(3), cache=False).run(inputs(0)))


def test_update_from_an_onnx_model_of_another_structure_is_refused() -> None:
    build, _ = MODELS["cnn"]
    program = nerve.compile(build(0, channels=8), cache=False)
    with pytest.raises(WeightUpdateError, match="structure differs"):
        program.update_weights(build(0, channels=4))


def test_bfloat16_params_take_bits_or_ml_dtypes() -> None:
    g = Graph("bf16")
    g.add_input("x", TensorType(DType.BFLOAT16, (4,)))
    g.add_param("w", np.zeros(4, np.uint16), DType.BFLOAT16)
    g.add_node(Node("Add", ["x", "w"], ["y"]), {"y": TensorType(DType.BFLOAT16, (4,))})
    g.set_outputs(["y"])
    program = nerve.compile(g, cache=False)
    values = np.array([1.0, 2.0, -3.0, 0.5], ml_dtypes.bfloat16)
    program.update_weights({"w": values})
    assert np.array_equal(program.weights["w"], values.view(np.uint16))
    program.update_weights({"w": values.view(np.uint16) + 1})
    with pytest.raises(WeightUpdateError, match="bfloat16 takes uint16 bit patterns"):
        program.update_weights({"w": np.ones(4, np.float32)})


def test_targets_with_baked_weights_refuse_updates() -> None:
    import dataclasses

    program = nerve.compile(add_weight(), cache=False)
    program.plan.target = dataclasses.replace(program.plan.target, mutable_weights=False)
    with pytest.raises(WeightUpdateError, match="bakes weights into the program"):
        program.update_weights({"w": np.ones(4, np.float32)})


def test_no_run_sees_a_mix_of_old_and_new_weights() -> None:
    size = 1 << 20  # big enough that a copy and a run overlap when nothing keeps them apart
    program = nerve.compile(add_weight(size), cache=False)
    x = np.zeros(size, np.float32)
    versions = [np.full(size, float(v), np.float32) for v in range(2)]
    mixed: list[float] = []
    stop = threading.Event()

    def runner() -> None:
        while not stop.is_set():
            y = program.run({"x": x})["y"]
            if y[0] != y[-1] or y.min() != y.max():
                mixed.append(float(y.min()))

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(40):
            program.update_weights({"w": versions[i % 2]})
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not mixed


def test_runs_in_flight_finish_on_old_weights_and_later_runs_see_new() -> None:
    started, release = threading.Event(), threading.Event()
    seen: list[float] = []

    def on_run(env: dict[str, np.ndarray]) -> None:
        seen.append(float(env["w"][0]))
        started.set()
        release.wait(timeout=30)
        seen.append(float(env["w"][0]))  # the same run, after the update was requested

    program = null_program(add_weight(value=1.0), on_run=on_run)
    run = threading.Thread(target=program.run, args=({"x": np.zeros(4, np.float32)},))
    run.start()
    assert started.wait(timeout=30)
    update = threading.Thread(
        target=program.update_weights, args=({"w": np.full(4, 2.0, np.float32)},))
    update.start()
    time.sleep(0.2)
    assert update.is_alive(), "the update must wait for the run in flight"
    release.set()
    run.join(timeout=30)
    update.join(timeout=30)
    assert not update.is_alive() and seen == [1.0, 1.0]
    program.run({"x": np.zeros(4, np.float32)})
    assert seen[-1] == 2.0


def test_weight_outputs_are_copies_an_update_cannot_change() -> None:
    from tests.unit.runtime.models import weight_output

    program = nerve.compile(weight_output(), cache=False)
    out = program.run({"x": np.zeros(3, np.float32)}, copy=False)["w"]
    kept = out.copy()
    program.update_weights({"w": np.full(3, 9.0, np.float32)})
    assert np.array_equal(out, kept)
    assert np.array_equal(program.run({"x": np.zeros(3, np.float32)})["w"], np.full(3, 9.0))


def test_update_report_counts_bytes_and_time() -> None:
    build, _ = MODELS["transformer"]
    program = nerve.compile(build(0), cache=False)
    report = program.update_weights(weights_of(build(1)))
    arena_bytes = sum(s.nbytes for s in program.arena.layout.values())
    assert report.bytes >= arena_bytes
    assert report.seconds > 0
    assert "Params" in str(report)


@pytest.mark.parametrize("name", list(MODELS))
def test_arena_holds_exactly_what_the_bake_recipes_compute(name: str) -> None:
    from nerve.compiler.bake import run_recipes

    build, _ = MODELS[name]
    weights = weights_of(build(0))
    program = nerve.compile(build(0), cache=False)
    reference = run_recipes(program.plan, weights)
    assert program.arena.slots
    for slot, view in program.arena.slots.items():
        assert view.dtype == reference[slot].dtype and view.shape == reference[slot].shape
        assert view.tobytes() == reference[slot].tobytes(), slot


def test_large_transposed_weights_are_moved_in_blocks_exactly() -> None:
    from nerve.compiler.bake import run_recipes

    rng = np.random.default_rng(0)
    g = Graph("gemm")
    g.add_input("x", TensorType(DType.FLOAT32, (2, 70)))
    g.add_param("w", rng.standard_normal((101, 70)).astype(np.float32))
    g.add_node(Node("Gemm", ["x", "w"], ["y"], {"transB": 1}),
               {"y": TensorType(DType.FLOAT32, (2, 101))})
    g.set_outputs(["y"])
    program = nerve.compile(g, cache=False)
    (slot,) = program.plan.transformed_slots()
    reference = run_recipes(program.plan, {"w": g.weights["w"]})[slot]
    assert program.arena.slots[slot].tobytes() == reference.tobytes()
    w2 = rng.standard_normal((101, 70)).astype(np.float32)
    program.update_weights({"w": w2})
    assert np.array_equal(program.arena.slots[slot], w2.T)


def test_engines_keeping_derived_copies_hear_of_updates_while_runs_wait() -> None:
    from nerve.runtime.compile import build_executables
    from nerve.runtime.program import Program

    class Packing:
        """An executable that keeps a private copy of its weight (like a packed layout)."""

        def __init__(self, inner: Any, arena: list[Any]) -> None:
            self.inner, self.arena = inner, arena
            self.calls: list[list[str]] = []
            self.packed: np.ndarray | None = None

        def run(self, env: dict[str, np.ndarray]) -> None:
            if self.packed is None:
                self.packed = env["w"].copy()
            env["w"] = self.packed  # the run's own environment: reads the private copy
            self.inner.run(env)

        def weights_changed(self, slots: list[str]) -> None:
            assert self.arena[0]._lock._writing  # runs are held back while we refresh
            self.calls.append(list(slots))
            self.packed = self.arena[0].slots["w"].copy()

    plan = nerve.compile(add_weight(), cache=False).plan
    holder: list[Any] = []
    exe = Packing(build_executables(plan)[0], holder)
    program = Program(plan, [exe])
    holder.append(program.arena)
    x = {"x": np.zeros(4, np.float32)}
    assert np.array_equal(program.run(x)["y"], np.zeros(4))
    program.update_weights({"w": np.full(4, 5.0, np.float32)})
    assert exe.calls == [["w"]]
    assert np.array_equal(program.run(x)["y"], np.full(4, 5.0))
