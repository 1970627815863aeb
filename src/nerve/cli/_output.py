"""Terminal output for the CLI: tables, headings, and a progress display for slow steps.

``rich`` draws the tables and the spinner when it is installed; it is an optional dependency
(the ``cli`` extra), so without it everything falls back to plain aligned text.

>>> t = Table("op", "count", align="lr")
>>> t.add_row("Conv", 3)
>>> print(t.render_plain())
op    count
----  -----
Conv      3
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any


def _rich_installed() -> bool:
    try:
        return importlib.util.find_spec("rich") is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as absent
        return False


# Checked once, without importing rich (it is imported only when something is printed).
# Tests flip this to exercise the plain-text fallback.
USE_RICH = _rich_installed()

# A step shows progress only once it has taken this long, so fast steps print nothing.
PROGRESS_DELAY_S = 1.0


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        # Piped or captured output: don't squeeze tables into 80 columns.
        console = Console(stderr=stderr, highlight=False, width=160)
    return console


class Table:
    """A table with a header row; ``align`` has one letter per column: l(eft) or r(ight)."""

    def __init__(self, *columns: str, title: str | None = None, align: str | None = None) -> None:
        self.columns = list(columns)
        self.title = title
        self.align = align or "l" * len(columns)
        if len(self.align) != len(self.columns):
            raise ValueError("align needs one letter per column")
        self.rows: list[list[str]] = []

    def add_row(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"expected {len(self.columns)} cells, got {len(cells)}")
        self.rows.append(["" if c is None else str(c) for c in cells])

    def render_plain(self) -> str:
        """The table as aligned text, without rich."""
        widths = [
            max(len(r[i]) for r in [self.columns, *self.rows]) for i in range(len(self.columns))
        ]

        def line(cells: Sequence[str]) -> str:
            parts = [
                c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, self.align)
            ]
            return "  ".join(parts).rstrip()

        out = [self.title] if self.title else []
        out += [line(self.columns), line(["-" * w for w in widths])]
        out += [line(r) for r in self.rows]
        return "\n".join(out)

    def _rich(self) -> Any:
        from rich.table import Table as RichTable

        table = RichTable(title=self.title, title_justify="left", title_style="bold")
        for name, a in zip(self.columns, self.align):
            table.add_column(name, justify="right" if a == "r" else "left", overflow="fold")
        for row in self.rows:
            table.add_row(*row, style=None)
        return table


def emit_table(table: Table) -> None:
    """Print ``table`` to stdout (rich when available)."""
    if USE_RICH:
        _console().print(table._rich(), markup=False)
    else:
        print(table.render_plain())


def emit(text: str = "") -> None:
    """Print ``text`` verbatim (no markup, no wrapping)."""
    print(text)


def heading(text: str) -> None:
    """Print a section heading."""
    if USE_RICH:
        from rich.text import Text

        _console().print(Text(text, style="bold"))
    else:
        print(text)


def warn(text: str) -> None:
    """Print a warning line to stderr."""
    print(f"nerve: warning: {text}", file=sys.stderr)


# ---- progress ------------------------------------------------------------------------------


class Progress:
    """A spinner (or a bar, when ``total`` is known) on stderr for a step that is slow.

    Nothing appears for steps faster than :data:`PROGRESS_DELAY_S`, and nothing at all when
    stderr is not a terminal, so piped output and test captures stay clean.
    """

    def __init__(self, description: str, total: int | None = None) -> None:
        self.description = description
        self.total = total
        self.completed = 0
        self._lock = threading.Lock()
        self._closed = False
        self._display: Any = None
        self._task: Any = None
        self._timer: threading.Timer | None = None

    def __enter__(self) -> Progress:
        if sys.stderr.isatty():
            self._timer = threading.Timer(PROGRESS_DELAY_S, self._show)
            self._timer.daemon = True
            self._timer.start()
        return self

    def advance(self, steps: int = 1) -> None:
        with self._lock:
            self.completed += steps
            if self._display is not None:
                self._display.update(self._task, completed=self.completed)

    def _show(self) -> None:
        with self._lock:
            if self._closed:
                return
            if not USE_RICH:
                print(f"{self.description} ...", file=sys.stderr, flush=True)
                return
            from rich import progress as rp

            columns: list[Any] = [rp.SpinnerColumn(), rp.TextColumn("{task.description}")]
            if self.total:
                columns += [rp.BarColumn(), rp.MofNCompleteColumn()]
            columns.append(rp.TimeElapsedColumn())
            self._display = rp.Progress(*columns, console=_console(stderr=True), transient=True)
            self._display.start()
            self._task = self._display.add_task(
                self.description, total=self.total, completed=self.completed
            )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            if self._display is not None:
                self._display.stop()


@contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...`` leaves the elapsed seconds in ``t[0]``."""
    box = [0.0]
    start = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start


# ---- formatting ----------------------------------------------------------------------------


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds with sensible precision."""
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_bytes(n: int) -> str:
    """A byte count in B / KiB / MiB / GiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def fmt_count(n: int) -> str:
    """An integer with thousands separators."""
    return f"{n:,}"


def fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
