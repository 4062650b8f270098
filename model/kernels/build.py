"""Builds the C++ kernels (quant_gemm.cpp, decoder_ops.cpp, decoder_plan.cpp: one module) on first use with
`torch.utils.cpp_extension` into an on-disk cache.

The cache lives in `$KVSERVE_CACHE/kernels` (default `~/.cache/kvserve/kernels`); each build gets its own
directory keyed by the sources' hash, torch's and Python's versions, the compiler, the flags and this CPU's
feature flags, so a cached library is only ever loaded where it was built for. A cached library is imported
directly (no ninja, no compiler check). Without a compiler, or when the build fails, the loaders return None
after one log line; they never raise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import re
import shutil
import sys
import time
import warnings
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger("kvserve.kernels")

_HERE = Path(__file__).parent
SOURCES = tuple(_HERE / name for name in ("quant_gemm.cpp", "decoder_ops.cpp", "decoder_plan.cpp"))
HEADERS = tuple(_HERE / name for name in ("kernels.h", "simd.h"))
# -ffp-contract=off: the kernel spells out every fma, the compiler must not add any. -fopenmp: at::parallel_for
# is inline code over torch's OpenMP backend; the library then needs libgomp.so.1, which resolves to the copy
# torch has loaded (same soname): one thread pool, torch's.
BASE_FLAGS = ("-O3", "-ffp-contract=off", "-fopenmp")
ISA_FLAGS = {
    "native": ("-march=native",),  # AVX-512 or AVX2 or plain x86-64, whatever this CPU has
    "avx512": ("-march=x86-64-v4",),  # AVX-512 F/BW/CD/DQ/VL + AVX2 + FMA + F16C
    "avx2": ("-march=x86-64-v3",),  # AVX2 + FMA + F16C, no AVX-512
    "scalar": ("-march=x86-64",),  # SSE2 only: the portable fallback
}
# The portable builds (best first) that a Docker image carries prebuilt, and the /proc/cpuinfo flags each needs.
PORTABLE = ("avx512", "avx2", "scalar")
_V3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_NEEDS = {"avx512": _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}, "avx2": _V3, "scalar": set()}


def cache_dir() -> Path:
    """Where built kernels are kept: `$KVSERVE_CACHE/kernels` or `~/.cache/kvserve/kernels`."""
    root = os.environ.get("KVSERVE_CACHE")
    return Path(root) / "kernels" if root else Path.home() / ".cache" / "kvserve" / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} {torch.backends.cpu.get_cpu_capability()}"


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def cpu_supports(isa: str) -> bool:
    """Whether this CPU runs the `isa` build (native: by definition)."""
    if isa == "native":
        return True
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    return _NEEDS[isa] <= set(_cpu_flags().split())


def build_key(isa: str) -> str:
    """The cache key of one build: sources, torch, Python and flags, and for `native` the compiler and the CPU's
    features (a portable build runs on any CPU that has its ISA, so it can be built elsewhere, by any compiler)."""
    h = hashlib.sha256()
    for path in (*SOURCES, *HEADERS):
        h.update(path.read_bytes())
    host = (_compiler(), _cpu_flags()) if isa == "native" else ()
    for part in (torch.__version__, sys.version, *BASE_FLAGS, *ISA_FLAGS[isa], *host):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:16]


def _short_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"\berror\b", ln, re.IGNORECASE) and "Error building" not in ln]
    reason = (errors or lines or [type(exc).__name__])[0]
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _import_library(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(name: str, isa: str, build_dir: Path) -> ModuleType:
    """cpp_extension.load, its own compiler warnings muted: the outcome is logged once by the caller."""
    from torch.utils import cpp_extension  # imports setuptools: only when building

    build_dir.mkdir(parents=True, exist_ok=True)
    torch_log = logging.getLogger("torch.utils.cpp_extension")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cpp_extension.load(
                name=name,
                sources=[str(path) for path in SOURCES],
                extra_cflags=[*BASE_FLAGS, *ISA_FLAGS[isa]],
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                verbose=False,
            )
    finally:
        torch_log.setLevel(level)


def build_quant_kernels(isa: str = "native", root: Path | None = None, compile: bool = True) -> ModuleType | None:
    """Import the kernels from the cache, building them first if needed; None (logged) on failure.

    compile=False only looks in the cache (None, silently, when the build is not there)."""
    if isa not in ISA_FLAGS:
        raise ValueError(f"unknown isa {isa!r}; expected one of {sorted(ISA_FLAGS)}")
    if not cpu_supports(isa):
        log.info("kernels: this CPU cannot run the %s build", isa)
        return None
    try:
        name = f"kvserve_quant_{isa}_{build_key(isa)}"
        build_dir = (root or cache_dir()) / name
        library = build_dir / f"{name}.so"
        t0 = time.perf_counter()
        if library.is_file() and not (build_dir / "lock").exists():  # no build in progress (cpp_extension's lock)
            try:
                module = _import_library(name, library)
                log.info(
                    "kernels: loaded %s (%s) from %s in %.3f s", name, module.isa, build_dir, time.perf_counter() - t0
                )
                return module
            except ImportError as exc:  # a broken cache entry: build it again
                log.info("kernels: rebuilding %s (%s)", name, _short_reason(exc))
        if not compile:
            return None
        if shutil.which(_compiler()) is None:
            raise RuntimeError(f"no C++ compiler: {_compiler()!r} not found")
        module = _compile(name, isa, build_dir)
        log.info("kernels: built %s (%s) in %.1f s", name, module.isa, time.perf_counter() - t0)
        return module
    except Exception as exc:  # noqa: BLE001 - any failure means: no kernels, fall back
        log.warning("kernels: cannot build the quantized kernels (%s); using the float32 path", _short_reason(exc))
        return None


@lru_cache(maxsize=None)
def load_quant_kernels(isa: str = "native") -> ModuleType | None:
    """The kernels, once per process and ISA (so a failure is logged once).

    For `native`: this CPU's own cached build, else the best prebuilt portable build this CPU runs (a Docker
    image carries those and no compiler), else a native build now."""
    if isa != "native":
        return build_quant_kernels(isa)
    found = build_quant_kernels("native", compile=False)
    for portable in PORTABLE:
        if found is None and cpu_supports(portable):
            found = build_quant_kernels(portable, compile=False)
    return found or build_quant_kernels("native")


def prebuild(isas: list[str]) -> int:
    """Build portable kernels into the cache (the Docker image's build step); the exit status.

    An ISA this CPU cannot run is skipped (building imports the library, which would fault): an image built on
    an AVX2 machine carries the AVX2 and scalar builds only."""
    failed = []
    for isa in isas:
        if not cpu_supports(isa):
            print(f"kernels: skipping {isa}: this CPU cannot run it", file=sys.stderr)
        elif _compile_portable(isa) is None:
            failed.append(isa)
    if failed:
        print(f"kernels: could not build {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _compile_portable(isa: str) -> ModuleType | None:
    try:
        name = f"kvserve_quant_{isa}_{build_key(isa)}"
        module = _compile(name, isa, cache_dir() / name)
        print(f"kernels: built {name} ({module.isa}) in {cache_dir()}")
        return module
    except Exception as exc:  # noqa: BLE001
        print(f"kernels: {isa}: {_short_reason(exc)}", file=sys.stderr)
        return None


__all__ = ["build_key", "build_quant_kernels", "cache_dir", "cpu_supports", "load_quant_kernels", "prebuild"]
