"""Build the C++ CPU kernels before anything is timed, so that a fresh cache costs set-up time, never a number.

Building one kernel source takes seconds (g++ at -O3); done inside a first timed call it would exceed the time
budget and skip the mixer, or inflate its time. :func:`prebuild_native_kernels` builds every source in
``visattn/ops/csrc`` once (the build is cached on disk and in the process), tolerating a machine where they
cannot be built (no compiler, no AVX-512, ``VISATTN_NATIVE=0``): the mixers then run on their PyTorch paths.
"""

from __future__ import annotations

import logging

log = logging.getLogger("visattn")

NATIVE_LIBRARIES = ("local_attention", "tile_attention", "tile_attention_backward")
"""The kernel sources built when the kernel module does not list its source folder."""


def native_library_names() -> tuple[str, ...]:
    """The kernel sources to build: every ``*.cpp`` in the kernel module's source folder, else
    :data:`NATIVE_LIBRARIES`."""
    try:
        from ..ops import native
    except ImportError:
        return NATIVE_LIBRARIES
    source_dir = getattr(native, "SOURCE_DIR", None)
    names = tuple(sorted(p.stem for p in source_dir.glob("*.cpp"))) if source_dir is not None else ()
    return names or NATIVE_LIBRARIES


def prebuild_native_kernels() -> dict[str, bool]:
    """Build (or load from the cache) every native kernel library; whether each is available, by name. An empty
    dict where the kernel module cannot be imported."""
    try:
        from ..ops.native import native_library
    except ImportError as err:
        log.info("visattn.bench: no native kernels to build (%s)", err)
        return {}
    built = {name: native_library(name) is not None for name in native_library_names()}
    log.info("visattn.bench: native kernels %s", ", ".join(f"{k}: {'ready' if v else 'unavailable'}"
                                                           for k, v in built.items()))
    return built
