"""The NEON build compiles: every kernel source, cross-compiled for aarch64 Linux by zig's clang (``ziglang`` from
the package index) at the ``neon`` level's vector width, object files only and without OpenMP (zig ships no
``omp.h``), so that the sources keep building for ARM on an x86 CI machine. Also the path for GCC before 12
(``__builtin_shuffle`` for ``__builtin_shufflevector``), where the host compiler is GCC."""

from __future__ import annotations

import subprocess
import sys

import pytest

from visattn.ops import native

SOURCES = sorted(native.SOURCE_DIR.glob("*.cpp"))


def _compile(command: list[str], source, tmp_path) -> None:
    done = subprocess.run([*command, "-c", str(source), "-o", str(tmp_path / f"{source.stem}.o")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / f"{source.stem}.o").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_sources_compile_for_aarch64_neon(source, tmp_path):
    pytest.importorskip("ziglang")
    # zig reads -march as a CPU name: the baseline AArch64 CPU with NEON stands for -march=armv8-a+simd.
    flags = [f for f in native.level_flags("neon", openmp=False) if not f.startswith(("-march", "-shared"))]
    _compile([sys.executable, "-m", "ziglang", "c++", "-target", "aarch64-linux-gnu", "-mcpu=generic+neon",
              *flags, "-O0", "-Werror=return-type"], source, tmp_path)
    header = (tmp_path / f"{source.stem}.o").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_sources_compile_without_shufflevector(source, tmp_path):
    compiler = native._compiler()
    identity = native.available_compiler()
    if identity is None or "clang" in identity.lower():
        pytest.skip("needs GCC (clang always has __builtin_shufflevector)")
    done = subprocess.run([compiler, "-std=c++17", "-DVISATTN_SHUFFLEVECTOR=0", "-DVISATTN_VECTOR_BYTES=32",
                           "-fsyntax-only", str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
