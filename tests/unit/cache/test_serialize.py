"""The plan codec (JSON + tensors, no pickle), nerve's safetensors reader and writer, and
Program.save / nerve.load — in this process and in another one without the model."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import nerve
from nerve.compiler.serialize import (
    decode_graph,
    decode_plan,
    decode_value,
    encode_graph,
    encode_plan,
    encode_value,
)
from nerve.compiler.targets import cpu
from nerve.errors import ModelFormatError, TargetError
from nerve.ir import DType, TensorType, structural_key
from nerve.runtime.safetensors import parse, read_tensors, write_tensors
from tests.unit.cache.models import MODELS, add_weight

ROOT = Path(__file__).resolve().parents[3]


# ---- the codec -------------------------------------------------------------------------------


def _roundtrip(value: Any) -> Any:
    tensors: dict[str, np.ndarray] = {}
    doc = json.loads(json.dumps(encode_value(value, tensors)))
    return decode_value(doc, tensors)


@pytest.mark.parametrize("value", [
    0.1, -0.0, 1e-45, (1, 2, (3.5, "a")), [1, [2.0]], {"k": (1,)}, {1: "int key"}, b"\x00\xff",
    DType.BFLOAT16, TensorType(DType.INT8, (2, 3)), None, True, 2**70, "text",
    (("Relu", (0,), ()), ("Clip", (1,), (("min", 0.0),))),
])  # fmt: skip
def test_values_round_trip_exactly(value: Any) -> None:
    back = _roundtrip(value)
    assert back == value and type(back) is type(value)
    if isinstance(value, float):
        assert math.copysign(1, back) == math.copysign(1, value)


def test_special_floats_arrays_and_scalars_round_trip() -> None:
    assert math.isnan(_roundtrip(float("nan"))) and _roundtrip(float("-inf")) == float("-inf")
    for array in (np.arange(6, dtype=np.int64).reshape(2, 3), np.float32(2.5),
                  np.array(3.0, np.float32), np.array(["a", "bc"], dtype=object),
                  np.array([1, -2], ml_dtypes.int4)):
        back = _roundtrip(array)
        assert type(back) is type(array)
        assert np.asarray(back).dtype == np.asarray(array).dtype
        assert np.asarray(back).shape == np.asarray(array).shape
        assert np.array_equal(np.asarray(back), np.asarray(array))


def test_unknown_values_are_refused() -> None:
    with pytest.raises(ModelFormatError, match="cannot serialize a value of type object"):
        encode_value(object(), {})


@pytest.mark.parametrize("target", ["host", "cpu"])
@pytest.mark.parametrize("name", list(MODELS))
def test_plans_round_trip(name: str, target: str) -> None:
    build, _ = MODELS[name]
    plan = nerve.compile(build(0), target, cache=False).plan
    tensors: dict[str, np.ndarray] = {}
    doc = json.loads(json.dumps(encode_plan(plan, tensors)))
    back = decode_plan(doc, tensors)
    assert structural_key(back.graph) == structural_key(plan.graph)
    assert back.key == plan.key and back.target is plan.target
    assert back.bake_recipes == plan.bake_recipes and back.memory == plan.memory
    assert back.layouts == plan.layouts and back.params == plan.params
    assert back.options == plan.options and back.diagnostics == plan.diagnostics
    assert back.report.format() == plan.report.format()
    assert [[n.name for n in s.nodes] for s in back.segments] == \
        [[n.name for n in s.nodes] for s in plan.segments]
    assert all(n is back.graph.nodes[i] for i, n in enumerate(back.graph.nodes))
    assert back.graph.weights == {}


def test_graph_documents_hold_no_weights() -> None:
    build, _ = MODELS["transformer"]
    from nerve.frontend.onnx import load_onnx

    graph = load_onnx(build(0))
    tensors: dict[str, np.ndarray] = {}
    doc = encode_graph(graph, tensors)
    weight_bytes = {w.tobytes() for w in graph.weights.values()}
    assert not weight_bytes & {t.tobytes() for t in tensors.values()}
    assert structural_key(decode_graph(doc, tensors)) == structural_key(graph)


def test_malformed_documents_are_model_format_errors() -> None:
    plan = nerve.compile(add_weight(), cache=False).plan
    tensors: dict[str, np.ndarray] = {}
    doc = encode_plan(plan, tensors)
    for broken in ({**doc, "format": 99}, {**doc, "segments": [[0, "host", [99]]]},
                   {**doc, "graph": {"name": "g"}}):
        with pytest.raises(ModelFormatError):
            decode_plan(broken, tensors)


# ---- safetensors -------------------------------------------------------------------------------


def _all_dtypes() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for dt in DType:
        if dt is DType.STRING:
            continue
        values = rng.integers(0, 3, size=(2, 3)).astype(np.float32)
        if dt is DType.BFLOAT16:
            array = np.array([[0x3F80, 0x4000, 0xC040]] * 2, np.uint16)
        elif dt.is_low_precision:
            array = values.astype(dt.numpy)
        else:
            array = values.astype(dt.numpy)
        out[dt.value] = (dt, array)
    out["scalar"] = np.array(1.5, np.float32)
    out["empty"] = np.zeros((0, 4), np.float32)
    return out


def test_safetensors_round_trips_every_nerve_dtype(tmp_path: Path) -> None:
    tensors = _all_dtypes()
    path = tmp_path / "all.safetensors"
    write_tensors(path, tensors, {"note": "hello"})
    f = read_tensors(path)
    assert f.metadata["note"] == "hello"
    for name, value in tensors.items():
        dtype, array = value if isinstance(value, tuple) else (DType.from_numpy(value.dtype), value)
        assert f.dtypes[name] is dtype
        assert f.arrays[name].dtype == array.dtype and f.arrays[name].shape == array.shape
        assert f.arrays[name].tobytes() == array.tobytes()
        assert not f.arrays[name].flags.writeable


def test_safetensors_files_interoperate_with_the_reference_package(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.numpy")
    plain = tmp_path / "plain.safetensors"
    write_tensors(plain, {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                          "b": np.array([1, 2], np.int64)})
    loaded = st.load_file(str(plain))
    assert np.array_equal(loaded["a"], np.arange(6, dtype=np.float32).reshape(2, 3))
    ref = tmp_path / "ref.safetensors"
    st.save_file({"x": np.ones((3, 2), np.float16), "y": np.arange(4, dtype=np.int32)},
                 str(ref), metadata={"m": "1"})
    f = read_tensors(ref)
    assert f.metadata == {"m": "1"} and np.array_equal(f.arrays["y"], np.arange(4))
    assert f.dtypes["x"] is DType.FLOAT16


def test_truncated_or_garbled_safetensors_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    write_tensors(path, {"a": np.arange(100, dtype=np.float32), "b": np.ones(3, np.float32)})
    data = path.read_bytes()
    for broken in (data[:-7], data[:5], data[:20], b"\xff" * 8 + data[8:], b""):
        with pytest.raises(ModelFormatError):
            parse(broken)
    header_len = int.from_bytes(data[:8], "little")
    holed = data.replace(b'"data_offsets":[0,400]', b'"data_offsets":[4,400]')
    assert len(holed) == len(data) and int.from_bytes(holed[:8], "little") == header_len
    with pytest.raises(ModelFormatError, match=r"bytes|hole|overlaps"):
        parse(holed)


# ---- save and load ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["host", "cpu"])
def test_save_load_round_trip(tmp_path: Path, target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    build, inputs = MODELS["cnn"]
    program = nerve.compile(build(0), target)
    program.update_weights({"head/fc.bias": np.arange(10, dtype=np.float32)})
    path = tmp_path / "cnn.nerve"
    program.save(path)
    # No pickle: loading must not unpickle anything.
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    loaded = nerve.load(path)
    assert loaded.key == program.key and loaded.target == target
    got, want = loaded.run(inputs(0)), program.run(inputs(0))
    assert got["logits"].tobytes() == want["logits"].tobytes()
    assert np.array_equal(loaded.weights["head/fc.bias"], np.arange(10))
    # The file is a safetensors file: weights under param/, readable by any reader.
    f = read_tensors(path)
    assert f.metadata["format"] == "nerve.program"
    assert np.array_equal(f.arrays["param/head/fc.bias"], np.arange(10))


def test_loaded_programs_take_weight_updates_and_save_again(tmp_path: Path) -> None:
    build, inputs = MODELS["transformer"]
    nerve.compile(build(0)).save(tmp_path / "a.nerve")
    loaded = nerve.load(tmp_path / "a.nerve")
    loaded.update_weights(build(1))  # an ONNX model of the same structure
    fresh = nerve.compile(build(1), cache=False)
    assert loaded.run(inputs(0))["hidden"].tobytes() == fresh.run(inputs(0))["hidden"].tobytes()
    loaded.save(tmp_path / "b.nerve")
    again = nerve.load(tmp_path / "b.nerve")
    assert again.run(inputs(0))["hidden"].tobytes() == fresh.run(inputs(0))["hidden"].tobytes()
    # A saved program is also a weight source.
    program = nerve.compile(build(0), cache=False)
    program.update_weights(tmp_path / "b.nerve")
    assert program.run(inputs(0))["hidden"].tobytes() == fresh.run(inputs(0))["hidden"].tobytes()


def test_load_in_another_process_without_the_model(tmp_path: Path) -> None:
    build, inputs = MODELS["cnn"]
    program = nerve.compile(build(5))
    path = tmp_path / "cnn.nerve"
    program.save(path)
    np.save(tmp_path / "x.npy", inputs(0)["image"])
    script = (
        "import sys, numpy as np, nerve\n"
        "p = nerve.load(sys.argv[1])\n"
        "np.save(sys.argv[3], p.run({'image': np.load(sys.argv[2])})['logits'])\n"
        "print(p.report.cache, len(p.weights))\n"
    )
    # The same environment (BLAS settings change rounding), another cache, no tests/ path.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"),
           "NERVE_CACHE_DIR": str(tmp_path / "other-cache")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(path), str(tmp_path / "x.npy"),
         str(tmp_path / "y.npy")],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    got = np.load(tmp_path / "y.npy")
    assert got.tobytes() == program.run(inputs(0))["logits"].tobytes()


def test_corrupt_program_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.nerve"
    nerve.compile(add_weight(value=2.0)).save(path)
    data = path.read_bytes()
    cases = {
        "truncated": data[: len(data) - 3],
        "weights": data[:-4] + bytes(4 * [0x41]),  # the last tensor's bytes changed
    }
    for why, broken in cases.items():
        bad = tmp_path / f"{why}.nerve"
        bad.write_bytes(broken)
        with pytest.raises(ModelFormatError, match=r"corrupt|truncated|garbled|spans") as info:
            nerve.load(bad)
        assert str(bad) in str(info.value)
    plain = tmp_path / "plain.safetensors"
    write_tensors(plain, {"w": np.zeros(4, np.float32)})
    with pytest.raises(ModelFormatError, match="not a saved nerve program"):
        nerve.load(plain)


def test_program_for_missing_cpu_features_recompiles_or_refuses(tmp_path: Path) -> None:
    fancy = cpu.target(features=("avx2", "avx512f", "amx_tile", "amx_bf16", "amx_int8"))
    build, inputs = MODELS["cnn"]
    program = nerve.compile(build(0), fancy)
    path = tmp_path / "amx.nerve"
    program.save(path)
    here = set(nerve.compiler.targets.get_target("cpu").features)
    if {"amx_tile", "amx_bf16", "amx_int8"} <= here:
        pytest.skip("this machine has AMX")
    with pytest.raises(TargetError, match=r"amx_.* that this machine lacks"):
        nerve.load(path, recompile=False)
    with pytest.warns(RuntimeWarning, match="recompiling it for this machine"):
        loaded = nerve.load(path)
    assert set(loaded.plan.target.features) <= here
    want = nerve.compile(build(0), "cpu", cache=False).run(inputs(0))["logits"]
    assert loaded.run(inputs(0))["logits"].tobytes() == want.tobytes()
