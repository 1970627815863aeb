"""Native engine tests: a private compile cache per session, skipped without a C compiler."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from nerve.engines.native.toolchain import compiler_path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if compiler_path()[0] is not None:
        return
    skip = pytest.mark.skip(reason="no C compiler (cc, gcc, clang or NERVE_CC)")
    for item in items:
        path = str(item.fspath)
        if "tests/unit/native" in path and not path.endswith("test_no_compiler.py"):
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def native_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every native library these tests build goes to a fresh directory (a cold CI cache)."""
    path = str(tmp_path_factory.mktemp("nerve-cache"))
    old = os.environ.get("NERVE_CACHE_DIR")
    os.environ["NERVE_CACHE_DIR"] = path
    yield path
    if old is None:
        os.environ.pop("NERVE_CACHE_DIR", None)
    else:
        os.environ["NERVE_CACHE_DIR"] = old
