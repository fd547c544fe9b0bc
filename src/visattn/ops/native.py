"""Build, verify and load visattn's C++ CPU kernels (``ops/csrc``) on first use, through ctypes with typed signatures.

**ISA levels.** The kernels are written over vectors of :func:`vector_bytes` bytes and built for one level
(:data:`ISA_LEVELS`): ``avx512`` (64-byte vectors, 32 registers), ``avx2`` (AVX2 + FMA, 32 bytes, 16 registers),
``neon`` (AArch64, 16 bytes, 32 registers) or ``generic`` (the compiler's baseline target, 16 bytes). The level is
the best one the CPU runs (:func:`cpu_levels`: ``torch.backends.cpu.get_cpu_capability()``, the CPU's own feature
bits through ``torch.cpu``, ``/proc/cpuinfo`` where there is one, ``platform.machine()`` for ARM), or the one
``VISATTN_ISA`` names; a level the CPU cannot run is refused with a warning (no illegal instruction) and the best
one it runs is used instead (:func:`isa_level`).

**Cache.** Each source (with the shared headers in ``csrc``) is compiled once per source text, level and flags into
``$VISATTN_CACHE_DIR`` (default ``~/.cache/visattn``, created private: mode 0700) as ``<name>-<level>-<key>.so``
(``.dll`` on Windows). The build that writes a library writes its SHA-256 and the compiler's identity beside it
(``<file>.sha256``, JSON), both by atomic rename. Before loading, the library's hash is checked against that file:
a truncated, emptied, replaced or foreign library, or one without its hash file, is rebuilt with a warning where a
compiler exists and refused (never ``dlopen``-ed) where none does. A verified build is loaded without a compiler
too; with one, a build by another compiler is rebuilt.

**Compilers.** ``$CXX``, else ``g++``, ``c++`` or ``clang++``: GCC >= 9 or clang (MSVC is not supported; on
Windows use MinGW-w64 g++ or clang). Built with OpenMP where the compiler has it, else without (one thread).

**Calls.** Every exported function has its C parameter list declared once (:data:`SIGNATURES`), set as the
function's ``argtypes``/``restype`` when the library loads; :func:`call` checks every argument against it first
(CPU tensors of the expected dtype, ints, a finite float ``scale``) and raises :class:`NativeArgumentError` naming
the argument.

Where a kernel cannot be had (``VISATTN_NATIVE=0``, no compiler and no verified build, a failing build),
:func:`native_library` returns None and callers fall back to their PyTorch paths (logged once); with
``VISATTN_REQUIRE_NATIVE=1`` it raises RuntimeError instead (``VISATTN_NATIVE=0`` still turns the kernels off).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import math
import numbers
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger("visattn")

SOURCE_DIR = Path(__file__).parent / "csrc"
ISA_LEVELS = ("avx512", "avx2", "neon", "generic")
VECTOR_BYTES = {"avx512": 64, "avx2": 32, "neon": 16, "generic": 16}
LEVEL_FLAGS = {
    "avx512": ("-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"),
    "avx2": ("-mavx2", "-mfma"),
    "neon": ("-march=armv8-a+simd",),
    "generic": (),
}
BASE_FLAGS = ("-O3", "-shared", "-std=c++17")
OPENMP_FLAGS = ("-fopenmp",)
MIN_GCC = 9
_ARM_MACHINES = ("aarch64", "arm64", "armv8l", "armv8b")
_X86_MACHINES = ("x86_64", "amd64", "x64", "i686", "i386")
_SUFFIX = ".dll" if sys.platform == "win32" else ".so"


class NativeArgumentError(ValueError, TypeError):
    """A kernel argument of the wrong kind, dtype, device or value (both a ValueError and a TypeError)."""


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no", "off")


def require_native() -> bool:
    """Whether ``VISATTN_REQUIRE_NATIVE`` is set: an unavailable kernel then raises instead of falling back."""
    return _flag("VISATTN_REQUIRE_NATIVE")


# ---- ISA levels ---------------------------------------------------------------------------------------------------


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


def _machine() -> str:
    return platform.machine().lower()


def _torch_capability() -> str:
    """``torch.backends.cpu.get_cpu_capability()``: "AVX512", "AVX2", "DEFAULT", an ARM "SVE..." ..."""
    try:
        return torch.backends.cpu.get_cpu_capability().upper()
    except (AttributeError, RuntimeError):
        return "DEFAULT"


def _cpuid_supports(level: str) -> bool:
    """The CPU's feature bits as PyTorch's cpuinfo reads them (cpuid; any OS), where this torch exposes them."""
    probe = {"avx512": "_is_avx512_supported", "avx2": "_is_avx2_supported"}[level]
    try:
        return bool(getattr(torch.cpu, probe)())
    except (AttributeError, RuntimeError):
        return False


def cpu_levels() -> tuple[str, ...]:
    """The ISA levels this CPU runs, best first (``generic`` always last)."""
    machine = _machine()
    if machine in _ARM_MACHINES:
        return ("neon", "generic")
    if machine not in _X86_MACHINES:
        return ("generic",)
    capability, flags = _torch_capability(), set(_cpu_flags().split())
    levels = []
    if capability == "AVX512" or _cpuid_supports("avx512") or {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= flags:
        levels.append("avx512")
    if capability in ("AVX512", "AVX2") or _cpuid_supports("avx2") or {"avx2", "fma"} <= flags:
        levels.append("avx2")
    return (*levels, "generic")


def _default_level() -> str:
    """The best level :func:`cpu_levels` allows that PyTorch's own kernels also use (``ATEN_CPU_CAPABILITY`` lowers
    both)."""
    levels = cpu_levels()
    if levels[0] in ("avx512", "avx2"):
        capability = _torch_capability()
        capped = {"AVX512": "avx512", "AVX2": "avx2"}.get(capability, "generic")
        return next(level for level in levels if ISA_LEVELS.index(level) >= ISA_LEVELS.index(capped))
    return levels[0]


@functools.cache
def _resolve_level(requested: str | None, levels: tuple[str, ...], default: str) -> str:
    if requested is None:
        return default
    if requested not in ISA_LEVELS:
        log.warning("visattn: VISATTN_ISA=%r is not one of %s; using %s", requested, "|".join(ISA_LEVELS), default)
        return default
    if requested not in levels:
        log.warning("visattn: VISATTN_ISA=%s asks for a level this CPU cannot run (it runs %s); using %s instead",
                    requested, ", ".join(levels), default)
        return default
    return requested


def isa_level() -> str:
    """The ISA level the kernels are built for: ``VISATTN_ISA`` where the CPU runs it, else the best level the CPU
    runs (:func:`cpu_levels`)."""
    requested = os.environ.get("VISATTN_ISA", "").strip().lower() or None
    return _resolve_level(requested, cpu_levels(), _default_level())


def vector_bytes(level: str | None = None) -> int:
    """Bytes per vector of ``level`` (default :func:`isa_level`): 64 (avx512), 32 (avx2), 16 (neon, generic).
    The kernels keep ``vector_bytes() // 4`` float32 queries in the lanes of a vector."""
    return VECTOR_BYTES[isa_level() if level is None else level]


def has_avx512() -> bool:
    """Whether the CPU runs the ``avx512`` level."""
    return "avx512" in cpu_levels()


def level_flags(level: str, openmp: bool = True) -> tuple[str, ...]:
    """The compiler flags of a build of ``level``."""
    pic = () if sys.platform == "win32" else ("-fPIC",)
    tune = ("-mtune=native",) if level in ("avx512", "avx2") else ()
    return (*BASE_FLAGS, *pic, *LEVEL_FLAGS[level], *tune, f"-DVISATTN_VECTOR_BYTES={VECTOR_BYTES[level]}",
            *(OPENMP_FLAGS if openmp else ()))


# ---- compiler -----------------------------------------------------------------------------------------------------


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


@functools.cache
def _compiler_identity(compiler: str) -> str | None:
    """``<path>: <first line of --version>``, or None (logged) where the compiler does not run or is too old (GCC
    before 9 lacks ``__builtin_convertvector``; MSVC is not supported)."""
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
        dump = subprocess.run([compiler, "-dumpversion"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("visattn: the C++ compiler %s does not run (%s)", compiler, err)
        return None
    first = (version.stdout or version.stderr).strip().splitlines()[:1]
    banner = first[0] if first else ""
    if version.returncode != 0 or "microsoft" in banner.lower():
        log.warning("visattn: %s is not a usable C++ compiler (%r); visattn needs g++ >= %d or clang++ (MSVC is not "
                    "supported)", compiler, banner, MIN_GCC)
        return None
    major = re.match(r"\d+", dump.stdout.strip())
    if "clang" not in banner.lower() and major is not None and int(major.group()) < MIN_GCC:
        log.warning("visattn: %s is GCC %s; the kernels need GCC >= %d or clang", compiler, dump.stdout.strip(),
                    MIN_GCC)
        return None
    return f"{compiler}: {banner}"


def available_compiler() -> str | None:
    """The identity (path and version line) of the C++ compiler visattn would build with, or None where there is
    no usable one."""
    compiler = _compiler()
    return _compiler_identity(compiler) if compiler else None


# ---- cache --------------------------------------------------------------------------------------------------------


def _private_dir(path: Path) -> Path:
    """``path``, created with mode 0700 where it does not exist (a group- or world-writable one is logged)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    elif sys.platform != "win32" and path.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning("visattn: the kernel cache %s is writable by other users", path)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hash_file(library: Path) -> Path:
    """The file beside a cached library that records its SHA-256 and the compiler that built it."""
    return library.with_name(library.name + ".sha256")


@dataclass(frozen=True)
class Build:
    """One cache entry: a source at a level with its flags."""

    name: str
    level: str
    flags: tuple[str, ...]

    @functools.cached_property
    def key(self) -> str:
        """Hash of the source and headers, the level and the flags (not the compiler: a verified build is found
        again without one)."""
        sources = [(SOURCE_DIR / f"{self.name}.cpp").read_text()]
        sources += [h.read_text() for h in sorted(SOURCE_DIR.glob("*.h"))]
        return hashlib.sha256("\0".join([*sources, self.level, *self.flags]).encode()).hexdigest()[:16]

    @property
    def path(self) -> Path:
        return cache_dir() / f"{self.name}-{self.level}-{self.key}{_SUFFIX}"


def verify(library: Path) -> tuple[dict | None, str]:
    """The recorded build of ``library`` (its hash file's JSON) if the library's SHA-256 matches it, else None and
    the reason."""
    if not library.exists():
        return None, "no library"
    try:
        record = json.loads(hash_file(library).read_text())
    except FileNotFoundError:
        return None, "no hash file"
    except (OSError, ValueError) as err:
        return None, f"unreadable hash file ({err})"
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        return None, "malformed hash file"
    actual = _sha256(library)
    if actual != record["sha256"]:
        return None, f"SHA-256 {actual[:12]}... of {library.stat().st_size} bytes does not match the recorded " \
                     f"{record['sha256'][:12]}..."
    return record, ""


def _build(build: Build, compiler: str, identity: str) -> None:
    """Compile ``build`` into the cache: library and hash file written to a private temporary directory, then renamed
    into place (the hash file last)."""
    target = build.path
    with tempfile.TemporaryDirectory(dir=_private_dir(target.parent)) as tmp:
        built = Path(tmp) / target.name
        subprocess.run([compiler, *build.flags, str(SOURCE_DIR / f"{build.name}.cpp"), "-o", str(built)],
                       check=True, capture_output=True, text=True, timeout=300)
        record = {"sha256": _sha256(built), "compiler": identity, "level": build.level, "flags": list(build.flags)}
        hash_file(built).write_text(json.dumps(record, indent=1) + "\n")
        os.replace(built, target)
        os.replace(hash_file(built), hash_file(target))


def _unavailable(message: str, *args: object) -> None:
    if require_native():
        raise RuntimeError("visattn: VISATTN_REQUIRE_NATIVE=1 but " + message % args)
    log.warning("visattn: " + message + "; running the PyTorch fallback", *args)


def _load(build: Build) -> ctypes.CDLL | None:
    try:
        library = ctypes.CDLL(str(build.path))
    except OSError as err:
        _unavailable("loading %s failed: %s", build.path, err)
        return None
    missing = [f for f in SIGNATURES if SIGNATURES[f].library == build.name and not hasattr(library, f)]
    if missing:
        _unavailable("%s lacks %s", build.path, ", ".join(missing))
        return None
    for function, signature in SIGNATURES.items():
        if signature.library == build.name:
            getattr(library, function).argtypes = signature.argtypes
            getattr(library, function).restype = None
    return library


@functools.cache
def native_library(name: str) -> ctypes.CDLL | None:
    """The compiled ``csrc/<name>.cpp`` at :func:`isa_level` as a ``ctypes.CDLL`` with typed functions, or None
    where it cannot be had (logged once; RuntimeError under ``VISATTN_REQUIRE_NATIVE=1``)."""
    if os.environ.get("VISATTN_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        log.info("visattn: native kernels disabled by VISATTN_NATIVE=0")
        return None
    level = isa_level()
    compiler = _compiler()
    identity = _compiler_identity(compiler) if compiler else None
    builds = [Build(name, level, level_flags(level, openmp)) for openmp in (True, False)]
    if identity is None:
        for build in builds:
            record, reason = verify(build.path)
            if record is not None:
                return _load(build)
            if build.path.exists() or hash_file(build.path).exists():
                log.warning("visattn: refusing the cached %s (%s) and no C++ compiler can rebuild it", build.path,
                            reason)
        _unavailable("no usable C++ compiler found (g++ >= %d or clang++; set CXX) and no verified build of %s at "
                     "level %s is cached in %s", MIN_GCC, name, level, cache_dir())
        return None
    errors = []
    for build in builds:
        record, reason = verify(build.path)
        if record is not None and record.get("compiler") == identity:
            return _load(build)
        if record is not None:
            log.info("visattn: %s was built by %s; rebuilding with %s", build.path, record.get("compiler"), identity)
        elif build.path.exists() or hash_file(build.path).exists():
            log.warning("visattn: the cached %s failed verification (%s); rebuilding it", build.path, reason)
        try:
            _build(build, compiler, identity)
        except (OSError, subprocess.SubprocessError) as err:
            errors.append(getattr(err, "stderr", "") or str(err))
            continue
        return _load(build)
    _unavailable("building the %s kernel (level %s) failed: %s", name, level, errors[0][-2000:])
    return None


def library_path(name: str) -> Path:
    """Where the cached build of ``csrc/<name>.cpp`` at :func:`isa_level` (with OpenMP) is kept."""
    level = isa_level()
    return Build(name, level, level_flags(level)).path


# ---- typed calls --------------------------------------------------------------------------------------------------

# Parameter kinds: "float" a CPU tensor of the function's dtype (f32/f64 suffix), "float?" the same or None (NULL),
# "int64s" a CPU int64 tensor, "bytes" a CPU uint8/bool tensor, "int" a Python int (int64), "strides" three int64
# element strides (strides()), "scale" a finite Python float (double). Every function takes ``int threads`` last.
_KIND_CTYPES = {"float": ctypes.c_void_p, "float?": ctypes.c_void_p, "int64s": ctypes.c_void_p,
                "bytes": ctypes.c_void_p, "int": ctypes.c_int64, "strides": ctypes.POINTER(ctypes.c_int64),
                "scale": ctypes.c_double}


@dataclass(frozen=True)
class Signature:
    """An exported C function: its library and ordered ``(name, kind)`` parameters (``threads`` not listed)."""

    library: str
    params: tuple[tuple[str, str], ...]
    dtype: torch.dtype

    @property
    def argtypes(self) -> list:
        return [_KIND_CTYPES[kind] for _, kind in self.params] + [ctypes.c_int]


def _params(spec: str) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(item.split(":")) for item in spec.split())


_TILES = "count:int q_ptr:int64s q_idx:int64s seg_ptr:int64s key_ptr:int64s k_idx:int64s mask_off:int64s masks:bytes"
_SIZES = "batch:int heads:int dim:int dim_v:int"
_LAYOUT = "ndim:int shape:int64s start:int64s count:int64s step:int64s"
_C_FUNCTIONS = {
    "visattn_tile_forward": ("tile_attention", f"q:float k:float v:float out:float lse:float? {_SIZES} qs:strides "
                             f"ks:strides vs:strides os:strides ls:strides {_TILES} scale:scale"),
    "visattn_tile_backward": ("tile_attention_backward",
                              f"q:float k:float v:float out:float dout:float lse:float dq:float dk:float dv:float "
                              f"{_SIZES} qs:strides ks:strides vs:strides os:strides dos:strides ls:strides "
                              f"dqs:strides dks:strides dvs:strides {_TILES} dk_part:int dv_part:int add_keys:int "
                              f"scale:scale"),
    "visattn_local_forward": ("local_attention", f"q:float k:float v:float out:float lse:float {_SIZES} qs:strides "
                              f"ks:strides vs:strides {_LAYOUT} prefix:int scale:scale"),
    "visattn_local_backward": ("local_attention",
                               f"q:float k:float v:float dout:float lse:float delta:float dq:float dk:float dv:float "
                               f"{_SIZES} qs:strides ks:strides vs:strides {_LAYOUT} t_start:int64s t_count:int64s "
                               f"t_step:int64s prefix:int scale:scale"),
    "visattn_index_forward": ("local_attention", f"q:float k:float v:float out:float index:int64s rows:int width:int "
                              f"{_SIZES} qs:strides ks:strides vs:strides scale:scale"),
}
DTYPE_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
SIGNATURES: dict[str, Signature] = {
    f"{base}_{suffix}": Signature(library, _params(spec), dtype)
    for base, (library, spec) in _C_FUNCTIONS.items() for dtype, suffix in DTYPE_SUFFIX.items()
}


def _bad(function: str, name: str, value: object, expected: str) -> NativeArgumentError:
    shown = f"{type(value).__name__} {tuple(value.shape)} {value.dtype} on {value.device}" \
        if isinstance(value, Tensor) else repr(value)
    return NativeArgumentError(f"{function}: {name} must be {expected}, got {shown}")


def _tensor(function: str, name: str, value: object, dtypes: tuple[torch.dtype, ...], what: str) -> ctypes.c_void_p:
    if not isinstance(value, Tensor) or value.device.type != "cpu" or value.dtype not in dtypes:
        raise _bad(function, name, value, f"a CPU {what} tensor")
    return ctypes.c_void_p(value.data_ptr())


def _convert(function: str, signature: Signature, name: str, kind: str, value: object) -> object:
    if kind in ("float", "float?"):
        if value is None and kind == "float?":
            return ctypes.c_void_p(0)
        return _tensor(function, name, value, (signature.dtype,), str(signature.dtype).removeprefix("torch."))
    if kind == "int64s":
        return _tensor(function, name, value, (torch.int64,), "int64")
    if kind == "bytes":
        return _tensor(function, name, value, (torch.uint8, torch.bool), "uint8 (or bool)")
    if kind == "int":
        if isinstance(value, (bool, Tensor)) or not isinstance(value, numbers.Integral):
            raise _bad(function, name, value, "an int")
        return ctypes.c_int64(int(value))
    if kind == "strides":
        if isinstance(value, ctypes.Array) and value._type_ is ctypes.c_int64 and len(value) == 3:
            return value
        if isinstance(value, Sequence) and len(value) == 3 and all(
                isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in value):
            return (ctypes.c_int64 * 3)(*value)
        raise _bad(function, name, value, "three int64 element strides (native.strides(t))")
    return ctypes.c_double(check_scale(value, name))


def check_scale(scale: object, name: str = "scale") -> float:
    """``scale`` as a float: a finite Python float or int, else :class:`NativeArgumentError` naming ``name``
    (tensors, numpy scalars, bools, NaN and inf are refused)."""
    if isinstance(scale, (bool, Tensor, np.generic)) or not isinstance(scale, (float, int)):
        raise NativeArgumentError(f"{name} must be a finite Python float, got {type(scale).__name__} {scale!r}")
    value = float(scale)
    if not math.isfinite(value):
        raise NativeArgumentError(f"{name} must be a finite Python float, got {value!r}")
    return value


def needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd records an op on ``tensors``."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def supported(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether the kernels take these tensors: CPU, float32 or float64, one dtype."""
    return q.device.type == "cpu" and q.dtype in DTYPE_SUFFIX and q.dtype == k.dtype == v.dtype


def row_major(t: Tensor) -> Tensor:
    """``t`` itself when its last dim is contiguous (the kernels take any other strides), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


@functools.lru_cache(maxsize=256)
def stride_array(stride: tuple[int, ...]) -> ctypes.Array:
    """The int64 array of the first three of ``stride`` (``t.stride()``), kept per stride tuple (a bounded LRU): the
    kernels only read it. Calls of one kind of layer pass the same strides every time."""
    return (ctypes.c_int64 * 3)(*stride[:3])


def strides(t: Tensor) -> ctypes.Array:
    """The element strides of the first three dims of ``t`` (batch, head, token) as an int64 array
    (:func:`stride_array`)."""
    return stride_array(t.stride())


@functools.lru_cache(maxsize=256)
def stride_arrays(*strides: tuple[int, ...]) -> tuple[ctypes.Array, ...]:
    """:func:`stride_array` of each of ``strides``, kept per tuple of them (one bounded-LRU lookup per call)."""
    return tuple(stride_array(stride) for stride in strides)


def convert_argument(function: str, name: str, kind: str, value: object) -> object:
    """``value`` checked and converted to ctypes as :func:`call` does for the parameter ``name`` (of ``kind``) of
    ``function``, for callers that convert fixed arguments once and pass them on many calls (the tensors behind
    pointers must then be kept alive by the caller)."""
    signature = SIGNATURES.get(function)
    if signature is None or (name, kind) not in signature.params:
        raise NativeArgumentError(f"{function!r} has no parameter {name}:{kind}")
    return _convert(function, signature, name, kind, value)


def typed_function(library: str, function: str) -> ctypes._CFuncPtr | None:
    """The ctypes function ``function`` of the compiled ``library`` (its ``argtypes`` set from :data:`SIGNATURES`),
    or None where the library cannot be had. Calling it directly skips :func:`call`'s checks: the caller checks."""
    signature = SIGNATURES.get(function)
    if signature is None or signature.library != library:
        raise NativeArgumentError(f"{function!r} is not a function of the {library!r} kernel library")
    lib = native_library(library)
    return None if lib is None else getattr(lib, function)


def call(library: str, function: str, *args: object, threads: int | None = None) -> None:
    """Call ``function`` of the compiled ``library`` after checking ``args`` against its :data:`SIGNATURES` entry:
    tensors (CPU, of the function's dtype; int64 index arrays; uint8 masks) pass as data pointers (None as NULL where
    the C side takes one), ints as int64, three strides as an int64 array, ``scale`` as a finite double; on
    ``threads`` threads (default ``torch.get_num_threads()``; the last C argument). Raises
    :class:`NativeArgumentError` naming a bad argument, RuntimeError where the library cannot be had."""
    signature = SIGNATURES.get(function)
    if signature is None or signature.library != library:
        raise NativeArgumentError(f"{function!r} is not a function of the {library!r} kernel library")
    if len(args) != len(signature.params):
        raise NativeArgumentError(f"{function} takes {len(signature.params)} arguments "
                                  f"({', '.join(n for n, _ in signature.params)}) before threads, got {len(args)}")
    converted = [_convert(function, signature, name, kind, value)
                 for (name, kind), value in zip(signature.params, args, strict=True)]
    threads = torch.get_num_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or not 1 <= threads <= 4096:
        raise _bad(function, "threads", threads, "an int in [1, 4096]")
    lib = native_library(library)
    if lib is None:
        raise RuntimeError(f"visattn: the {library} kernel library is not available (see the log)")
    getattr(lib, function)(*converted, int(threads))
