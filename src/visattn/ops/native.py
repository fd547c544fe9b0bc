"""Build and load visattn's C++ CPU kernels (``ops/csrc``) on first use, through ctypes.

Each source (with the shared headers in ``csrc``) is compiled once per source text, compiler and CPU
(``-O3 -march=native -fopenmp``) into ``$VISATTN_CACHE_DIR`` (default ``~/.cache/visattn``) and loaded with
``ctypes``; nothing is built at install time and no torch headers are needed, so a build takes about a second.
Where the CPU lacks AVX-512 (:func:`has_avx512`), no C++ compiler is found, the build fails, or
``VISATTN_NATIVE=0`` is set, :func:`native_library` returns None and callers fall back to their PyTorch paths
(logged once).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger("visattn")

SOURCE_DIR = Path(__file__).parent / "csrc"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c++17")


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$VISATTN_CACHE_DIR`` or ``~/.cache/visattn``."""
    return Path(os.environ.get("VISATTN_CACHE_DIR", Path.home() / ".cache" / "visattn"))


def _cpu_flags() -> str:
    """The ``flags`` line of ``/proc/cpuinfo`` ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def _cpu_signature() -> str:
    return platform.machine() + _cpu_flags()


def has_avx512() -> bool:
    """Whether the CPU has AVX-512F, which the kernels' register blocking is written for: 64-byte vectors in 32
    registers. Built for AVX2 (16 registers of 32 bytes) they spill and ran 30-50x slower per attended pair than
    dense SDPA, so they are not used there."""
    return "avx512f" in _cpu_flags().split()


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


@functools.cache
def native_library(name: str) -> ctypes.CDLL | None:
    """The compiled ``csrc/<name>.cpp`` as a ``ctypes.CDLL``, or None where it cannot be built (logged once)."""
    if os.environ.get("VISATTN_NATIVE", "1") == "0":
        log.info("visattn: native kernels disabled by VISATTN_NATIVE=0")
        return None
    if not has_avx512():
        log.warning("visattn: the C++ kernels need AVX-512, which this CPU lacks; %s runs on its PyTorch fallback",
                    name)
        return None
    compiler = _compiler()
    if compiler is None:
        log.warning("visattn: no C++ compiler found; %s runs on its PyTorch fallback", name)
        return None
    sources = [(SOURCE_DIR / f"{name}.cpp").read_text()] + [h.read_text() for h in sorted(SOURCE_DIR.glob("*.h"))]
    key = hashlib.sha256("\0".join([*sources, compiler, *FLAGS, _cpu_signature()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"{name}-{key}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                built = Path(tmp) / target.name
                subprocess.run([compiler, *FLAGS, str(SOURCE_DIR / f"{name}.cpp"), "-o", str(built)],
                               check=True, capture_output=True, text=True, timeout=300)
                os.replace(built, target)
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", "") or str(err)
            log.warning("visattn: building the %s kernel failed, using the PyTorch fallback: %s", name, detail[-2000:])
            return None
    return ctypes.CDLL(str(target))


DTYPE_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def supported(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether the kernels take these tensors: CPU, float32 or float64, one dtype."""
    return q.device.type == "cpu" and q.dtype in DTYPE_SUFFIX and q.dtype == k.dtype == v.dtype


def needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd records an op on ``tensors``."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def row_major(t: Tensor) -> Tensor:
    """``t`` itself when its last dim is contiguous (the kernels take any other strides), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def strides(t: Tensor) -> ctypes.Array:
    """The element strides of the first three dims of ``t`` (batch, head, token) as an int64 array."""
    return (ctypes.c_int64 * 3)(*t.stride()[:3])


def _c_arg(arg: object) -> object:
    if arg is None or isinstance(arg, Tensor):
        return ctypes.c_void_p(0 if arg is None else arg.data_ptr())
    if isinstance(arg, int) and not isinstance(arg, bool):
        return ctypes.c_int64(arg)
    if isinstance(arg, float):
        return ctypes.c_double(arg)
    return arg


def call(library: str, function: str, *args: object, threads: int | None = None) -> None:
    """Call ``function`` of the compiled ``library`` with tensors passed as data pointers (None as NULL), ints as
    int64, floats as double and ctypes objects as they are, on ``threads`` threads (default
    ``torch.get_num_threads()``; the last C argument)."""
    threads = torch.get_num_threads() if threads is None else threads
    getattr(native_library(library), function)(*map(_c_arg, args), ctypes.c_int(threads))
