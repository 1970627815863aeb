"""The C toolchain of the native engine: which compiler, which flags, which BLAS.

The compiler is ``NERVE_CC`` when set, else the first of ``cc``, ``gcc``, ``clang`` on PATH.
Code-generation flags follow the CPU features read from ``/proc/cpuinfo`` at run time (the
x86-64 micro-architecture level: v4 with AVX-512, v3 with AVX2+FMA), and OpenMP is used when
the compiler can link it. BLAS is OpenBLAS from the ``scipy-openblas32`` wheel when installed;
without it the kernels fall back to a reference GEMM (correct, slow) and say so once.

>>> tc = find_toolchain()
>>> tc is None or tc.cc.endswith(("cc", "gcc", "clang")) or bool(tc.cc)
True
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from nerve import flags
from nerve.errors import CompileError

log = logging.getLogger("nerve.native")

CSRC = Path(__file__).parent / "csrc"


@dataclass(frozen=True)
class Blas:
    """An OpenBLAS to compile and link against; its C symbols carry ``prefix``."""

    include_dir: str
    lib_dir: str
    library: str  # the name after -l
    prefix: str  # "scipy_" for scipy-openblas32: scipy_cblas_sgemm
    set_threads: str  # the openblas_set_num_threads symbol
    version: str

    def cflags(self) -> list[str]:
        return [
            "-DNK_HAVE_BLAS",
            f"-DNK_BLAS_PREFIX={self.prefix}",
            f"-DNK_BLAS_SET_THREADS={self.set_threads}",
            f"-I{self.include_dir}",
        ]

    def ldflags(self) -> list[str]:
        return [f"-L{self.lib_dir}", f"-l{self.library}", f"-Wl,-rpath,{self.lib_dir}"]


@dataclass(frozen=True)
class Toolchain:
    """A working C compiler with the flags for this CPU."""

    cc: str
    version: str
    openmp: bool
    features: frozenset[str]
    arch_flags: tuple[str, ...]
    blas: Blas | None
    is_clang: bool = False
    extra: tuple[str, ...] = field(default=())

    def cflags(self, *, kernels: bool = False) -> list[str]:
        """Flags for a shared-library translation unit (kernels get -O3, segments -O2)."""
        opt = ["-O3"] if kernels else ["-O2"]
        if not kernels and not self.is_clang:
            # gcc's -O2 only vectorises trivially; generated loops are worth the full pass.
            opt += ["-ftree-vectorize", "-fvect-cost-model=dynamic"]
        common = ["-fPIC", "-shared", "-std=gnu11", "-fno-math-errno", f"-I{CSRC}"]
        omp = ["-fopenmp"] if self.openmp else []
        blas = self.blas.cflags() if (self.blas and kernels) else []
        return [*opt, *common, *self.arch_flags, *omp, *blas, *self.extra]

    @property
    def identity(self) -> str:
        """Everything that changes the machine code: part of every cache key."""
        parts = [
            self.cc,
            self.version,
            " ".join(self.arch_flags),
            f"omp={self.openmp}",
            f"blas={self.blas.version if self.blas else 'none'}",
            " ".join(self.extra),
        ]
        return "\n".join(parts)


# ---- CPU features ---------------------------------------------------------------------------


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``), empty when unknown."""
    path = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not path.is_file():
        return frozenset()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


_V4 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
_V3 = {"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"}


def arch_candidates(features: frozenset[str]) -> list[list[str]]:
    """Architecture flag sets to try, best first (the compiler may not know the newest)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return [[]]
    if _V4 <= features:
        return [
            ["-march=x86-64-v4", "-mtune=generic", "-mprefer-vector-width=512"],
            ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma"],
            [],
        ]
    if _V3 <= features:
        return [["-march=x86-64-v3", "-mtune=generic"], ["-mavx2", "-mfma"], []]
    return [[]]


# ---- compiler ---------------------------------------------------------------------------------


def compiler_path() -> tuple[str | None, str]:
    """(the compiler to use or None, a description of where it was looked for)."""
    configured = flags.get("NERVE_CC").strip()
    if configured:
        found = shutil.which(configured)
        if found is None and os.path.isfile(configured) and os.access(configured, os.X_OK):
            found = configured
        return found, f"NERVE_CC={configured!r}"
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found, name
    return None, "cc, gcc and clang on PATH"


def _version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.splitlines()[0].strip() if out.stdout else ""


def _try_compile(cc: str, args: list[str], source: str) -> bool:
    with tempfile.TemporaryDirectory(prefix="nerve-cc-") as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text(source)
        cmd = [cc, *args, str(src), "-o", str(Path(tmp) / "probe.so")]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return res.returncode == 0


_OMP_PROBE = "#include <omp.h>\nint nk_probe(void) { return omp_get_max_threads(); }\n"
_PLAIN_PROBE = "int nk_probe(int x) { return x + 1; }\n"


def find_blas() -> Blas | None:
    """OpenBLAS from the scipy-openblas32 wheel, or None when it is not installed."""
    try:
        import scipy_openblas32 as sob  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        include, libdir, lib = sob.get_include_dir(), sob.get_lib_dir(), sob.get_library()
        header = (Path(include) / "cblas.h").read_text(errors="replace")
    except (OSError, AttributeError):
        return None
    gemm = re.search(r"\b(\w*)cblas_sgemm\s*\(", header)
    threads = re.search(r"\b(\w*openblas_set_num_threads)\s*\(", header)
    if gemm is None or threads is None:
        return None
    version = str(getattr(sob, "__version__", "?"))
    return Blas(include, libdir, lib, gemm.group(1), threads.group(1), version)


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Warn (and log) ``message`` once per process."""
    if message in _warned:
        return
    _warned.add(message)
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


@functools.lru_cache(maxsize=8)
def _detect(cc_setting: str) -> Toolchain | None:
    cc, where = compiler_path()
    if cc is None:
        warn_once(
            f"nerve: no C compiler found ({where}); the native engine falls back to the host "
            "engine (numpy). Install gcc or clang, or set NERVE_CC to a C compiler."
        )
        return None
    version = _version(cc)
    is_clang = "clang" in version.lower()
    features = cpu_flags()
    base = ["-fPIC", "-shared", "-O1"]
    arch: list[str] | None = None
    for candidate in arch_candidates(features):
        if _try_compile(cc, [*base, *candidate], _PLAIN_PROBE):
            arch = candidate
            break
    if arch is None:
        warn_once(
            f"nerve: the C compiler {cc} ({where}) cannot build a shared library; the native "
            "engine falls back to the host engine. Check the compiler, or set NERVE_CC."
        )
        return None
    openmp = _try_compile(cc, [*base, *arch, "-fopenmp"], _OMP_PROBE)
    if not openmp:
        warn_once(
            f"nerve: {cc} cannot build OpenMP code (-fopenmp); native kernels run on one thread."
        )
    blas = find_blas()
    if blas is None:
        warn_once(
            "nerve: OpenBLAS (the scipy-openblas32 wheel) is not installed; the native engine "
            "uses its slow reference GEMM. Install it with `pip install nerve[native]`."
        )
    return Toolchain(cc, version, openmp, features, tuple(arch), blas, is_clang)


def find_toolchain() -> Toolchain | None:
    """The toolchain for the current ``NERVE_CC`` setting (probed once per setting)."""
    return _detect(flags.get("NERVE_CC"))


def source_hash(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def run_compiler(cmd: list[str], source: Path, log_path: Path) -> None:
    """Run one compiler command; failures raise CompileError naming the kept source file."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise CompileError(
            f"the C compiler timed out building {source}; the generated file is kept there"
        ) from None
    except OSError as exc:
        raise CompileError(f"cannot run the C compiler {cmd[0]!r}: {exc}") from None
    log_path.write_text(" ".join(cmd) + "\n\n" + res.stdout + res.stderr)
    if res.returncode != 0:
        message = (res.stderr or res.stdout).strip()
        if len(message) > 4000:
            message = message[:4000] + "\n... (truncated; full log in " + str(log_path) + ")"
        raise CompileError(
            f"the C compiler failed on the generated file {source} (exit {res.returncode}):\n"
            f"{message}\nThe source and the build log ({log_path}) are kept for inspection; "
            "please report this as a nerve bug."
        )
