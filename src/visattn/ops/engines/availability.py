"""Whether visattn's C++ kernels can take a call: built for this CPU, and tensors they accept.

The answers are constants of a process (the build does not change under a running model), so the functions here are
marked as ``torch.compiler.assume_constant_result`` marks a function: ``torch.compile`` evaluates them once while
tracing, instead of tracing into the build.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import native

__all__ = ["KERNEL_DTYPES", "kernel_refusal", "kernels_ready", "mark_constant"]

KERNEL_DTYPES = (torch.float32, torch.float64)


def mark_constant(fn: Callable) -> Callable:
    """Mark ``fn`` as ``torch.compiler.assume_constant_result`` does (dynamo evaluates it once while tracing and
    keeps the result as a constant), without importing ``torch._dynamo`` when visattn is imported."""
    fn._dynamo_marked_constant = True
    return fn


def kernels_ready(library: str) -> bool:
    """Whether the kernel library ``library`` is built (or loaded from the cache) for this CPU."""
    return native.native_library(library) is not None


@mark_constant
def kernel_refusal(dtype: torch.dtype, device_type: str, libraries: tuple[str, ...]) -> str | None:
    """Why visattn's C++ kernels ``libraries`` cannot take tensors of ``dtype`` on ``device_type`` (None: they can)."""
    if device_type != "cpu":
        return f"tensors on {device_type}: the kernels are CPU code"
    if dtype not in KERNEL_DTYPES:
        return f"dtype {dtype}: the kernels take float32 and float64"
    missing = [lib for lib in libraries if not kernels_ready(lib)]
    if missing:
        return f"the {', '.join(missing)} kernel is not available (see the log, or visattn.ops.native)"
    return None
