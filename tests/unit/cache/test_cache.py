"""The program cache: hits run no pass and never change results; corrupt, foreign or
incomplete entries are discarded and rebuilt (DESIGN invariant 3); two processes compiling
one model compile it once; the size limits evict least recently used entries."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nerve
from nerve.cli import main as cli_main
from nerve.compiler.targets import get_target
from nerve.runtime import cache as cache_module
from nerve.runtime.budget import compile_count
from nerve.runtime.cache import MANIFEST, PLAN_FILE, CacheWarning, ProgramCache
from tests.unit.cache.models import MODELS, add_weight

ROOT = Path(__file__).resolve().parents[3]


def _outputs_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


def _no_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cache hit ran the compiler")

    # nerve.runtime.compile is also the name of the function the package exports.
    monkeypatch.setattr(sys.modules["nerve.runtime.compile"], "compile_plan", refuse)


@pytest.mark.parametrize("target", ["host", "cpu"])
@pytest.mark.parametrize("name", list(MODELS))
def test_hit_runs_no_pass_and_gives_the_same_results(
    name: str, target: str, cache: ProgramCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    build, inputs = MODELS[name]
    first = nerve.compile(build(0), target, cache=cache)
    assert first.report.cache == "miss"
    expected = first.run(inputs(0))
    with monkeypatch.context() as m:
        _no_passes(m)
        memory_hit = nerve.compile(build(0), target, cache=cache)
        cache.forget()  # the next lookup reads the disk entry
        disk_hit = nerve.compile(build(0), target, cache=cache)
    for program in (memory_hit, disk_hit):
        assert program.report.cache == "hit"
        assert _outputs_equal(program.run(inputs(0)), expected)
    assert cache.stats.memory_hits == 1 and cache.stats.disk_hits == 1
    assert [p.name for p in disk_hit.report.passes] == [p.name for p in first.report.passes]


def test_models_differing_only_in_weights_share_one_entry(cache: ProgramCache) -> None:
    build, inputs = MODELS["cnn"]
    a = nerve.compile(build(0), cache=cache)
    b = nerve.compile(build(1), cache=cache)
    assert b.report.cache == "hit" and a.key == b.key
    assert len(cache.entries()) == 1
    fresh = nerve.compile(build(1), cache=False)
    assert _outputs_equal(b.run(inputs(0)), fresh.run(inputs(0)))
    assert not _outputs_equal(a.run(inputs(0)), b.run(inputs(0)))


def test_entries_hold_no_weights(cache: ProgramCache) -> None:
    program = nerve.compile(add_weight(value=123.0), cache=cache)
    entry = cache.entry_dir(program.key)
    data = (entry / PLAN_FILE).read_bytes()
    assert np.float32(123.0).tobytes() * 4 not in data
    cache.forget()
    found = cache.lookup(program.key)
    assert found is not None and found.graph.weights == {}


def test_a_hit_is_isolated_from_programs_that_change_their_plan(cache: ProgramCache) -> None:
    program = nerve.compile(add_weight(), cache=cache)
    program.plan.segments[0].engine = "null"  # null_program does this to its own plan
    program.plan.graph.nodes.clear()
    again = nerve.compile(add_weight(), cache=cache)
    assert again.report.cache == "hit"
    assert again.plan.segments[0].engine == "host" and again.plan.graph.nodes


def _entry(cache: ProgramCache, model: Any = None) -> tuple[Path, Any]:
    model = model or add_weight()
    program = nerve.compile(model, cache=cache)
    cache.forget()
    return cache.entry_dir(program.key), program


def _expect_rebuilt(cache: ProgramCache, what: str) -> None:
    before = compile_count()
    with pytest.warns(CacheWarning, match=what):
        program = nerve.compile(add_weight(), cache=cache)
    assert program.report.cache == "miss" and compile_count() == before + 1
    assert np.array_equal(program.run({"x": np.ones(4, np.float32)})["y"], np.ones(4))
    cache.forget()
    assert nerve.compile(add_weight(), cache=cache).report.cache == "hit"  # rebuilt entry


def test_truncated_entry_is_discarded_and_rebuilt(cache: ProgramCache) -> None:
    entry, _ = _entry(cache)
    plan = entry / PLAN_FILE
    plan.write_bytes(plan.read_bytes()[: plan.stat().st_size // 2])
    _expect_rebuilt(cache, "truncated or garbled")


def test_garbled_entry_is_discarded_and_rebuilt(cache: ProgramCache) -> None:
    entry, _ = _entry(cache)
    plan = entry / PLAN_FILE
    data = bytearray(plan.read_bytes())
    data[len(data) // 2] ^= 0xFF
    plan.write_bytes(bytes(data))
    _expect_rebuilt(cache, "truncated or garbled")


def test_garbled_manifest_is_discarded_and_rebuilt(cache: ProgramCache) -> None:
    entry, _ = _entry(cache)
    (entry / MANIFEST).write_text("{not json")
    _expect_rebuilt(cache, "manifest is garbled")


def test_foreign_version_is_discarded_and_rebuilt(cache: ProgramCache) -> None:
    entry, _ = _entry(cache)
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["nerve"] = "0.0.0-other"
    (entry / MANIFEST).write_text(json.dumps(manifest))
    _expect_rebuilt(cache, "foreign: nerve is '0.0.0-other'")


def test_entry_of_another_key_is_foreign(cache: ProgramCache) -> None:
    entry, _ = _entry(cache)
    other, _ = _entry(cache, add_weight(size=8))
    for name in (PLAN_FILE, MANIFEST):
        (entry / name).write_bytes((other / name).read_bytes())
    _expect_rebuilt(cache, "foreign: id is")


def test_incomplete_entry_is_rebuilt_quietly(cache: ProgramCache, recwarn: Any) -> None:
    entry, _ = _entry(cache)
    (entry / MANIFEST).unlink()  # a compile that died before its commit record
    program = nerve.compile(add_weight(), cache=cache)
    assert program.report.cache == "miss"
    assert not [w for w in recwarn if issubclass(w.category, CacheWarning)]
    assert (entry / MANIFEST).exists()


def test_artifacts_are_part_of_the_entry(cache: ProgramCache) -> None:
    program = nerve.compile(add_weight(), cache=False)
    key = program.key
    cache.prepare(key)
    directory = cache.artifact_dir(key)
    assert directory is not None
    (directory / "segments.so").write_bytes(b"\x7fELF fake library")
    cache.store(program.plan, key)
    manifest = json.loads((cache.entry_dir(key) / MANIFEST).read_text())
    assert "artifacts/segments.so" in manifest["files"]
    cache.forget()
    assert cache.lookup(key) is not None
    (directory / "segments.so").write_bytes(b"\x7fELF tampered")
    cache.forget()
    with pytest.warns(CacheWarning, match="artifacts/segments.so does not match"):
        assert cache.lookup(key) is None
    assert not cache.entry_dir(key).exists()


def test_compile_sets_the_artifact_dir_engines_use(cache: ProgramCache) -> None:
    program = nerve.compile(add_weight(), cache=cache)
    assert program.plan.artifact_dir == cache.entry_dir(program.key) / "artifacts"
    assert nerve.compile(add_weight(), cache=False).plan.artifact_dir is None


def _compile_in_child(root: str, queue: Any) -> None:
    import time

    import nerve
    from tests.unit.cache.models import add_weight

    rc: Any = sys.modules["nerve.runtime.compile"]
    real = rc.compile_plan

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)  # hold the lock long enough for the other process to wait on it
        return real(*args, **kwargs)

    rc.compile_plan = slow
    os.environ["NERVE_CACHE_DIR"] = root
    program = nerve.compile(add_weight())
    y = program.run({"x": np.ones(4, np.float32)})["y"]
    queue.put((program.report.cache, y.tolist()))


def test_two_processes_compiling_one_model_compile_once(isolated_cache: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env_path])
    try:
        children = [ctx.Process(target=_compile_in_child, args=(str(isolated_cache), queue))
                    for _ in range(2)]
        for child in children:
            child.start()
        results = [queue.get(timeout=120) for _ in children]
        for child in children:
            child.join(timeout=60)
            assert child.exitcode == 0
    finally:
        os.environ["PYTHONPATH"] = env_path
    assert sorted(r[0] for r in results) == ["hit", "miss"]
    assert results[0][1] == results[1][1] == [1.0] * 4
    assert len(ProgramCache(isolated_cache).entries()) == 1


def test_disk_size_limit_evicts_least_recently_used(isolated_cache: Path) -> None:
    cache = ProgramCache(isolated_cache)
    keys = [nerve.compile(add_weight(size=n), cache=cache).key for n in (4, 5, 6)]
    sizes = {e.key: e.bytes for e in cache.entries()}
    os.utime(cache.entry_dir(keys[0]) / MANIFEST, (1, 1))  # the oldest use
    small = ProgramCache(isolated_cache, disk_bytes=sizes[keys[1]] + sizes[keys[2]])
    assert small.evict() == 1
    assert {e.key for e in small.entries()} == {keys[1], keys[2]}
    assert small.lookup(keys[0]) is None


def test_store_keeps_the_disk_level_under_its_limit(isolated_cache: Path) -> None:
    cache = ProgramCache(isolated_cache, disk_bytes=1)
    for n in (4, 5, 6):
        nerve.compile(add_weight(size=n), cache=cache)
    assert len(cache.entries()) <= 1 and cache.stats.evicted >= 2


def test_memory_level_is_bounded_by_bytes(isolated_cache: Path) -> None:
    probe = ProgramCache(isolated_cache, disk=False)
    nerve.compile(add_weight(), cache=probe)
    one = probe.summary()["memory_bytes"]
    cache = ProgramCache(isolated_cache, disk=False, memory_bytes=2 * one + one // 2)
    keys = [nerve.compile(add_weight(size=n), cache=cache).key for n in (4, 5, 6, 7)]
    assert cache.summary()["memory_entries"] == 2
    assert cache.summary()["memory_bytes"] <= 2 * one + one // 2
    assert cache.lookup(keys[-1]) is not None and cache.lookup(keys[0]) is None


def test_cache_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, isolated_cache: Path) -> None:
    assert nerve.compile(add_weight(), cache=False).report.cache == "off"
    monkeypatch.setenv("NERVE_CACHE", "0")
    assert nerve.compile(add_weight()).report.cache == "off"
    assert not (isolated_cache / "programs").exists()
    with pytest.raises(nerve.CompileError, match="cache= takes"):
        nerve.compile(add_weight(), cache="yes")


def test_default_cache_lives_under_nerve_cache_dir(isolated_cache: Path) -> None:
    program = nerve.compile(add_weight())
    assert program.report.cache == "miss"
    default = cache_module.default_cache()
    assert default is not None
    assert (isolated_cache / "programs" / default.entry_id(program.key) / MANIFEST).is_file()
    assert nerve.compile(add_weight()).report.cache == "hit"


def test_custom_targets_are_not_cached(cache: ProgramCache) -> None:
    import dataclasses

    custom = dataclasses.replace(get_target("host"), description="a variant")
    assert nerve.compile(add_weight(), custom, cache=cache).report.cache == "off"
    assert cache.entries() == []


def test_cli_lists_measures_and_clears(isolated_cache: Path, capsys: Any) -> None:
    program = nerve.compile(add_weight())
    assert cli_main(["cache", "ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["key"] for e in listed] == [program.key]
    assert cli_main(["cache", "ls"]) == 0
    assert program.key[:16] in capsys.readouterr().out
    assert cli_main(["cache", "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 1
    assert cli_main(["cache", "stats"]) == 0
    assert "entries: 1" in capsys.readouterr().out
    assert cli_main(["cache", "clear"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert ProgramCache(isolated_cache).entries() == []
    assert cli_main(["cache", "ls", "--dir", str(isolated_cache)]) == 0
    assert "is empty" in capsys.readouterr().out


def test_fingerprint_covers_the_compiler_sources() -> None:
    assert len(cache_module.fingerprint()) == 64
    assert sys.modules["nerve.compiler.pipeline"].__file__  # the sources it hashes exist


def test_stores_keep_a_running_total_instead_of_scanning(isolated_cache: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ProgramCache(isolated_cache)
    nerve.compile(add_weight(size=4), cache=cache)  # the first store scans once
    scans: list[int] = []
    real = ProgramCache.entries
    monkeypatch.setattr(ProgramCache, "entries",
                        lambda self: scans.append(1) or real(self))  # type: ignore[func-returns-value]
    for n in (5, 6, 7):
        nerve.compile(add_weight(size=n), cache=cache)
    assert not scans
    usage = json.loads((cache.root / "usage.json").read_text())
    monkeypatch.setattr(ProgramCache, "entries", real)
    assert usage["bytes"] == sum(e.bytes for e in cache.entries())
