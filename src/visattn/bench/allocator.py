"""Steady allocation for timing: glibc's ``malloc`` keeps freed memory instead of returning it to the system.

A mixer that forms an ``N x N`` temporary allocates hundreds of MB per call. By default glibc serves blocks above
its mmap threshold (at most 32 MiB) with fresh ``mmap`` pages and unmaps them on ``free``, so every call pays the
kernel's page faults and zeroing again, and what that costs depends on the process (transparent huge pages, memory
fragmentation): the same mixer measured in three processes one after another differed by up to 2x. With
``M_MMAP_MAX = 0`` every block comes from the heap, and with a large ``M_TRIM_THRESHOLD`` freed heap memory is kept,
so a repeated call reuses pages it already touched. ``visattn bench`` sets this once at its start; timing then
measures the computation, for the mixer and its SDPA baseline alike, as a process with a caching allocator sees it
(PyTorch's CPU performance guide recommends jemalloc or tcmalloc for the same reason; in your own runs
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment has this effect). Memory freed during the
run is not returned to the system until the process exits; ``visattn bench --system-allocator`` keeps glibc's
defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_BYTES = 2**31 - 1
"""The largest trim threshold ``mallopt`` takes (an int): freed memory up to 2 GiB at the heap's top is kept."""
SYSTEM = "system default"
KEPT = "glibc heap, freed memory kept (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)"


def allocator_state() -> str:
    """:data:`KEPT` once :func:`keep_freed_memory` has succeeded in this process, else :data:`SYSTEM`."""
    return KEPT if keep_freed_memory.cache_info().currsize and keep_freed_memory() else SYSTEM


@functools.cache
def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to serve every block from its heap and keep freed memory (see the module docstring).

    Returns True when both settings were accepted, False where the C library is not glibc (macOS, musl, Windows),
    which then keeps its own behaviour. Idempotent; affects the whole process.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) == 1
