"""Every kernel entry point at every ISA level this CPU runs, against a float64 dense reference.

One subprocess per level (``VISATTN_ISA`` set, ``VISATTN_REQUIRE_NATIVE=1``) runs this file as a script: the tile
kernel's forward and backward over a hand-built tile list (an unmasked and a masked segment, more keys than one
64-key chunk, tail rows), the per-query kernel's forward and backward over 1-D and 2-D progressions with prefix
tokens, and the index kernel, in float64 and float32, at head dims on and off the vector width. It loads
``ops/native.py`` by path, so nothing else of visattn is imported.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

NATIVE_PATH = Path(__file__).parents[2] / "src" / "visattn" / "ops" / "native.py"


def load_native():
    """``visattn/ops/native.py`` as a module of its own (visattn's package is not imported)."""
    spec = importlib.util.spec_from_file_location("visattn_native_by_path", NATIVE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---- the checks (run in the subprocess) ---------------------------------------------------------------------------


def _reference(q, k, v, allowed, scale):
    """Dense masked softmax attention in float64 (``allowed``: [nq, nk] bool), and its log-sum-exp."""
    import torch

    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


def _close(name, got, want, dtype):
    import torch

    tol = 1e-9 if dtype == torch.float64 else 2e-4
    err = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    assert err <= tol * max(1.0, want.abs().max().item()), f"{name} ({dtype}): max error {err}"


def check_tiles(native, dtype, dim, dim_v, threads):
    import torch

    g = torch.Generator().manual_seed(dim * 7 + dim_v)
    b, h, n, prefix = 1, 2, 80, 5
    nq = 19  # 19 = 16 + 3 and 8 + 8 + 3: tail rows at 64- and 32-byte vectors
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for d in (dim, dim, dim_v))
    q_idx = torch.randperm(n, generator=g)[:nq]
    k_seg = prefix + torch.randperm(n - prefix, generator=g)
    rows = -(-nq // 16) * 16
    seg_mask = torch.rand(n - prefix, nq, generator=g) < 0.6
    masks = torch.zeros(n - prefix, rows, dtype=torch.uint8)
    masks[:, :nq] = seg_mask.to(torch.uint8)
    i64 = torch.int64
    tiles = [1, torch.tensor([0, nq], dtype=i64), q_idx, torch.tensor([0, 2], dtype=i64),
             torch.tensor([0, prefix, n], dtype=i64), torch.cat([torch.arange(prefix), k_seg]),
             torch.tensor([-1, 0], dtype=i64), masks.reshape(-1)]
    allowed = torch.zeros(nq, n, dtype=torch.bool)
    allowed[:, :prefix] = True
    allowed[:, k_seg] = seg_mask.T
    scale = 0.7
    qt, kt, vt = (x.to(dtype) for x in (q, k, v))
    out = torch.zeros(b, h, n, dim_v, dtype=dtype)
    lse = torch.full((b, h, n), float("-inf"), dtype=dtype)
    st = native.strides
    suffix = native.DTYPE_SUFFIX[dtype]
    native.call("tile_attention", f"visattn_tile_forward_{suffix}", qt, kt, vt, out, lse, b, h, dim, dim_v, st(qt),
                st(kt), st(vt), st(out), st(lse), *tiles, scale, threads=threads)
    qr, kr, vr = (x.clone().requires_grad_() for x in (q, k, v))
    want, want_lse = _reference(qr[:, :, q_idx], kr, vr, allowed, scale)
    _close("tile forward", out[:, :, q_idx], want, dtype)
    _close("tile lse", lse[:, :, q_idx], want_lse, dtype)
    grad = torch.randn(want.shape, generator=g, dtype=torch.float64)
    want.backward(grad)
    dout = torch.zeros(b, h, n, dim_v, dtype=dtype)
    dout[:, :, q_idx] = grad.to(dtype)
    dq = torch.zeros_like(qt)
    dk_parts, dv_parts = torch.zeros(threads, *kt.shape, dtype=dtype), torch.zeros(threads, *vt.shape, dtype=dtype)
    native.call("tile_attention_backward", f"visattn_tile_backward_{suffix}", qt, kt, vt, out, dout, lse, dq,
                dk_parts[0], dv_parts[0], b, h, dim, dim_v, st(qt), st(kt), st(vt), st(out), st(dout), st(lse),
                st(dq), st(dk_parts[0]), st(dv_parts[0]), *tiles, kt.numel(), vt.numel(), 1, scale, threads=threads)
    _close("tile dq", dq, qr.grad, dtype)
    _close("tile dk", dk_parts.sum(0), kr.grad, dtype)
    _close("tile dv", dv_parts.sum(0), vr.grad, dtype)


def _progression(table):
    """(start, count, step) per row of a bool [L, L] table whose true columns form progressions."""
    import torch

    start, count, step = [], [], []
    for row in table:
        cols = torch.nonzero(row).flatten().tolist()
        start.append(cols[0] if cols else 0)
        count.append(len(cols))
        step.append(cols[1] - cols[0] if len(cols) > 1 else 1)
    return [torch.tensor(x, dtype=torch.int64) for x in (start, count, step)]


def _neighborhood_table(length, kernel, dilation):
    import torch

    table = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        group = [j for j in range(i % dilation, length, dilation)]
        pos = group.index(i)
        first = min(max(pos - kernel // 2, 0), len(group) - kernel)
        for j in group[first:first + kernel]:
            table[i, j] = True
    return table


def check_local(native, dtype, dim, shape, kernels, dilations, threads):
    import torch

    g = torch.Generator().manual_seed(dim + len(shape))
    b, h, prefix = 1, 2, 2
    tables = [_neighborhood_table(n, kk, d) for n, kk, d in zip(shape, kernels, dilations, strict=True)]
    forward = [_progression(t) for t in tables]
    transposed = [_progression(t.T) for t in tables]
    pack = [torch.cat([p[i] for p in forward]) for i in range(3)]
    t_pack = [torch.cat([p[i] for p in transposed]) for i in range(3)]
    allowed = tables[0]
    for t in tables[1:]:
        allowed = (allowed[:, None, :, None] & t[None, :, None, :]).reshape(allowed.shape[0] * t.shape[0], -1)
    spatial = allowed.shape[0]
    n = prefix + spatial
    full = torch.cat([torch.ones(spatial, prefix, dtype=torch.bool), allowed], 1)
    q, k, v = (torch.randn(b, h, n, dim, generator=g, dtype=torch.float64) for _ in range(3))
    scale = 0.6
    qt, kt, vt = (x.to(dtype) for x in (q, k, v))
    out = torch.empty(b, h, spatial, dim, dtype=dtype)
    lse = torch.empty(b, h, spatial, dtype=dtype)
    st, suffix = native.strides, native.DTYPE_SUFFIX[dtype]
    shape_t = torch.tensor(shape, dtype=torch.int64)
    native.call("local_attention", f"visattn_local_forward_{suffix}", qt, kt, vt, out, lse, b, h, dim, dim,
                st(qt), st(kt), st(vt), len(shape), shape_t, *pack, prefix, scale, threads=threads)
    qr, kr, vr = (x.clone().requires_grad_() for x in (q, k, v))
    want, want_lse = _reference(qr[:, :, prefix:], kr, vr, full, scale)
    _close("local forward", out, want, dtype)
    _close("local lse", lse, want_lse, dtype)
    grad = torch.randn(want.shape, generator=g, dtype=torch.float64)
    want.backward(grad)
    dout = grad.to(dtype)
    delta = (dout * out).sum(-1)
    dq, dk, dv = (torch.empty(b, h, spatial, dim, dtype=dtype) for _ in range(3))
    native.call("local_attention", f"visattn_local_backward_{suffix}", qt, kt, vt, dout, lse, delta, dq, dk, dv, b,
                h, dim, dim, st(qt), st(kt), st(vt), len(shape), shape_t, *pack, *t_pack, prefix, scale,
                threads=threads)
    _close("local dq", dq, qr.grad[:, :, prefix:], dtype)
    _close("local dk", dk, kr.grad[:, :, prefix:], dtype)  # spatial keys; the caller adds the prefix keys' part
    _close("local dv", dv, vr.grad[:, :, prefix:], dtype)


def check_index(native, dtype, dim, threads):
    import torch

    g = torch.Generator().manual_seed(dim)
    b, h, rows, n, width = 1, 2, 9, 37, 21
    q = torch.randn(b, h, rows, dim, generator=g, dtype=torch.float64)
    k, v = (torch.randn(b, h, n, dim, generator=g, dtype=torch.float64) for _ in range(2))
    index = torch.stack([torch.stack([torch.randperm(n, generator=g)[:width] for _ in range(rows)])
                         for _ in range(b * h)]).reshape(b, h, rows, width)
    index[..., 0, 13:] = -1  # a list ended early
    allowed = torch.zeros(b, h, rows, n, dtype=torch.bool)
    allowed.scatter_(-1, index.clamp(min=0), True)
    allowed[..., 0, :] = False
    allowed[..., 0, :].scatter_(-1, index[..., 0, :13], True)
    scale = 0.5
    qt, kt, vt = (x.to(dtype) for x in (q, k, v))
    out = torch.empty(b, h, rows, dim, dtype=dtype)
    st = native.strides
    native.call("local_attention", f"visattn_index_forward_{native.DTYPE_SUFFIX[dtype]}", qt, kt, vt, out, index,
                rows, width, b, h, dim, dim, st(qt), st(kt), st(vt), scale, threads=threads)
    _close("index forward", out, _reference(q, k, v, allowed, scale)[0], dtype)


def run_level(level: str) -> None:
    import torch

    native = load_native()
    assert native.isa_level() == level, (native.isa_level(), level)
    for name in ("tile_attention", "tile_attention_backward", "local_attention"):
        assert native.native_library(name) is not None
        assert f"-{level}-" in native.library_path(name).name
    for dtype in (torch.float64, torch.float32):
        for dim, dim_v in ((16, 16), (5, 7), (32, 32)):
            check_tiles(native, dtype, dim, dim_v, threads=2)
        for dim in (16, 5, 48):
            check_local(native, dtype, dim, (11,), (5,), (1,), threads=2)
        check_local(native, dtype, 16, (5, 7), (3, 3), (1, 2), threads=1)
        check_index(native, dtype, 16, threads=2)
        check_index(native, dtype, 6, threads=1)
    print(f"level {level}: ok")


# ---- the test -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("level", ["avx512", "avx2", "neon", "generic"])
def test_every_kernel_matches_the_reference_at_each_level(level):
    native = load_native()
    if level not in native.cpu_levels():
        pytest.skip(f"this CPU runs {native.cpu_levels()}, not {level} (neon is compiled by test_native_cross)")
    if native.available_compiler() is None:
        pytest.skip("no C++ compiler")
    env = {**os.environ, "VISATTN_ISA": level, "VISATTN_REQUIRE_NATIVE": "1", "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, __file__, level], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"level {level}: ok" in done.stdout


if __name__ == "__main__":
    run_level(sys.argv[1])
