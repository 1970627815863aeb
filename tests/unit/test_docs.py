"""The Python examples in docs/ run as written (in order, sharing one namespace per file)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("name", ["user-guide.md"])
def test_python_blocks_run(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = (DOCS / name).read_text()
    blocks = BLOCK.findall(text)
    assert blocks, f"{name} has no python examples"
    namespace: dict[str, object] = {"__name__": f"docs.{name}"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{name}[block {i}]", "exec"), namespace)
