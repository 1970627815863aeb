"""Shared pytest setup."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Tests import helpers as `tests.<pkg>`; make the repository root importable.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_SESSION_CACHE: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    # Hermetic runs: the program cache (on by default) lives in a fresh directory for the
    # session, inherited by subprocesses, never the user's ~/.cache/nerve. Tests that need
    # their own cache directory still set one themselves.
    global _SESSION_CACHE
    _SESSION_CACHE = tempfile.mkdtemp(prefix="nerve-test-cache-")
    os.environ["NERVE_CACHE_DIR"] = _SESSION_CACHE


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_CACHE:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
