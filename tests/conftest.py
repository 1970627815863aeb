"""Shared pytest setup."""

from __future__ import annotations

import sys
from pathlib import Path

# Tests import helpers as `tests.<pkg>`; make the repository root importable.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
