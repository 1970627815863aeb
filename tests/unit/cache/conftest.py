"""Fixtures for the program cache, delta compilation and save/load tests.

Every test gets its own cache directory (``NERVE_CACHE_DIR`` points into ``tmp_path``) and a
fresh compile count, so nothing here reads or writes the user's ``~/.cache/nerve``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nerve.runtime.budget import reset_compile_count
from nerve.runtime.cache import ProgramCache


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "nerve-cache"
    monkeypatch.setenv("NERVE_CACHE_DIR", str(root))
    monkeypatch.setenv("NERVE_CACHE", "1")
    reset_compile_count()
    yield root
    reset_compile_count()


@pytest.fixture
def cache(isolated_cache: Path) -> ProgramCache:
    return ProgramCache(isolated_cache)
