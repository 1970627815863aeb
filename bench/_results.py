"""Writing the benchmarks' outputs: one section of ``bench/RESULTS.md`` (the other sections
are left alone) and a JSON baseline under ``bench/baselines/``."""

from __future__ import annotations

import json
import re
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
