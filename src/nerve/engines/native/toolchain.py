"""The C toolchain of the native engine: which compiler, which flags, which BLAS.

The compiler is ``NERVE_CC`` when set, else the first of ``cc``, ``gcc``, ``clang`` on PATH.
Code-generation flags follow the CPU features read from ``/proc/cpuinfo`` at run time (the
x86-64 micro-architecture level: v4 with AVX-512, v3 with AVX2+FMA); threads come from the
kernels' own pthread pool (``csrc/nk_threads.c``), not OpenMP. BLAS is OpenBLAS from the ``scipy-openblas32`` wheel when installed;
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
import sys
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
    features: frozenset[str]
    arch_flags: tuple[str, ...]
    blas: Blas | None
    is_clang: bool = False
    extra: tuple[str, ...] = field(default=())

    def cflags(self, *, kernels: bool = False) -> list[str]:
        """Flags for a shared-library translation unit (kernels get -O3, segments -O2)."""
        # -fno-trapping-math: nerve never reads FP exception flags, and without it gcc will
        # not vectorise floorf/rintf (so no loop using nk_expf/nk_erff/nk_tanhf vectorises).
        opt = ["-O3"] if kernels else ["-O2"]
        if not kernels and not self.is_clang:
            # gcc's -O2 only vectorises trivially; generated loops are worth the full pass.
            opt += ["-ftree-vectorize", "-fvect-cost-model=dynamic"]
        common = [
            "-fPIC",
            "-shared",
            "-std=gnu11",
            "-fno-math-errno",
            "-fno-trapping-math",
            f"-I{CSRC}",
        ]
        blas = self.blas.cflags() if (self.blas and kernels) else []
        return [*opt, *common, *self.arch_flags, "-pthread", *blas, *self.extra]

    @property
    def identity(self) -> str:
        """Everything that changes the machine code: part of every cache key."""
        parts = [
            self.cc,
            self.version,
            " ".join(self.arch_flags),
            "threads=nk_parallel_for",
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


def cpu_vendor() -> str:
    """``vendor_id`` from ``/proc/cpuinfo`` ("GenuineIntel", "AuthenticAMD"), or ""."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return value.strip()
    return ""


def openblas_coretype(features: frozenset[str], vendor: str) -> str | None:
    """The OpenBLAS kernel set to force, or None to keep OpenBLAS's own choice.

    OpenBLAS 0.3.x does not know AMD's AVX-512 cores (Zen 4/5) and runs its AVX2 "Haswell"
    kernels there, at half the speed its AVX-512 "SkylakeX" kernels reach on the same core
    (measured: 119 vs 210 GFLOP/s single-threaded sgemm on a Zen 5 EPYC).
    """
    if vendor == "AuthenticAMD" and features >= _V4:
        return "SkylakeX"
    return None


_V4 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
_V3 = {"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"}


def arch_candidates(features: frozenset[str]) -> list[list[str]]:
    """Architecture flag sets to try, best first (the compiler may not know the newest)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return [[]]
    if features >= _V4:
        return [
            ["-march=x86-64-v4", "-mtune=generic", "-mprefer-vector-width=512"],
            ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma"],
            [],
        ]
    if features >= _V3:
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


_PLAIN_PROBE = "int nk_probe(int x) { return x + 1; }\n"


def find_blas() -> Blas | None:
    """OpenBLAS from the scipy-openblas32 wheel, or None when it is not installed."""
    if "scipy_openblas32" not in sys.modules and not os.environ.get("OPENBLAS_CORETYPE"):
        # Importing the wheel loads OpenBLAS, which reads its kernel choice once, now.
        core = openblas_coretype(cpu_flags(), cpu_vendor())
        if core:
            os.environ["OPENBLAS_CORETYPE"] = core
            log.info("OPENBLAS_CORETYPE=%s: OpenBLAS does not recognise this CPU's AVX-512", core)
    try:
        import scipy_openblas32 as sob
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
    blas = find_blas()
    if blas is None:
        warn_once(
            "nerve: OpenBLAS (the scipy-openblas32 wheel) is not installed; the native engine "
            "uses its slow reference GEMM. Install it with `pip install nerve[native]`."
        )
    return Toolchain(cc, version, features, tuple(arch), blas, is_clang)


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
