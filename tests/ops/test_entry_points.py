"""Every public entry that can reach visattn's kernels, driven with the calls that used to crash the process or give a
silently wrong result (issue 11), then with random strides, dtypes, odd shapes, prefix tokens and scales against
the float64 reference.

Repros that used to kill the process (a tensor ``scale`` passed as a pointer into the thread count, a ``shape``
that disagrees with N, an index past N, a tensor where the C side takes a double) run in one child process
(:func:`crash_repros`): each prints its outcome on a line of its own, so a signal ends the child and fails every
repro not yet printed instead of the test session.

Tolerances against the float64 reference: float64 1e-10, float32 2e-5 (rtol 1e-4), bfloat16 5e-2 absolute and
3e-2 relative (inputs rounded to bfloat16 first, so only the computation's error counts; bfloat16 weights and sums
carry 8 bits, and one output in 160 of a radial mask at scale 1.4 was 0.047 off on the reference backend). Sizes
are tiny; scales stay below 1.5 so float32 logits keep their precision.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from visattn import masks
from visattn.masks import AxialMask, Mask, SeparableMask, SequenceMask, SlidingWindowMask, materialize
from visattn.ops import (
    BACKENDS,
    axial_attention,
    block_sparse_attention,
    explain,
    index_attention,
    local_attention,
    masked_attention,
    reference,
    tiled_attention,
)
from visattn.ops.dispatch import ENGINES
from visattn.ops.engines import flex
from visattn.ops.engines.fused_tiles import build_tiles
from visattn.ops.engines.kernel_ops import tile_attention
from visattn.ops.native import native_library
from visattn.ops.paro_attention import bitmap_token_mask, paro_block_sparse_attention

pytestmark = pytest.mark.usefixtures("one_thread")

NATIVE = all(native_library(lib) is not None for lib in ("tile_attention", "tile_attention_backward",
                                                         "local_attention"))
needs_native = pytest.mark.skipif(not NATIVE, reason="the C++ kernels are not built on this machine")
TOLERANCE = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-4, 2e-5), torch.bfloat16: (3e-2, 5e-2)}
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- the crash repros, in a child process ------------------------------------------------------------------------

CHILD = textwrap.dedent('''
    import sys, torch
    from visattn import masks
    from visattn.ops import index_attention, local_attention, native
    from visattn.ops.engines import kernel_ops
    from visattn.ops.engines.fused_tiles import build_tiles
    from visattn.ops.paro_attention import paro_block_sparse_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
    mask = masks.neighborhood_mask(3)

    def index(value):
        idx = torch.randint(0, 16, (1, 2, 16, 4), generator=g)
        idx[0, 1, 5, 2] = value
        return idx

    def native_args(scale=0.5, rows=16):
        out = torch.zeros(1, 2, 16, 8)
        return [q, k, v, out, index(3), rows, 4, 1, 2, 8, 8, native.strides(q), native.strides(k), native.strides(v),
                scale]

    def tiles(q_idx=(0, 1), k_idx=(0, 1, 2)):
        return build_tiles([(torch.tensor(q_idx).numpy(), [(torch.tensor(k_idx).numpy(), None)])])

    REPROS = {
        "paro_tensor_scale": lambda: paro_block_sparse_attention(q, k, v, torch.ones(2, 2, 2, dtype=torch.bool),
                                                                 block=8, scale=torch.tensor(0.25)),
        "local_shape_larger": lambda: local_attention(q, k, v, mask, (5, 5)),
        "local_shape_smaller": lambda: local_attention(q, k, v, mask, (3, 3)),
        "index_past_n": lambda: index_attention(q, k, v, index(16)),
        "index_far_past_n": lambda: index_attention(q, k, v, index(1 << 40)),
        "op_index_past_n": lambda: torch.ops.visattn.index_attention(q, k, v, index(16), 0.5),
        "op_progression_wrong_grid": lambda: torch.ops.visattn.progression_attention(
            q, k, v, mask.key, [5, 5], 0, 0.5, False, "fused_tiles"),
        "op_tiles_past_n": lambda: kernel_ops.tile_attention(q, k, v, tiles(k_idx=(0, 16))),
        "op_tile_queries_past_n": lambda: kernel_ops.tile_attention(q, k, v, tiles(q_idx=(3, 99))),
        "native_tensor_scale": lambda: native.call("local_attention", "visattn_index_forward_f32",
                                                   *native_args(scale=torch.tensor(0.25))),
        "native_tensor_int": lambda: native.call("local_attention", "visattn_index_forward_f32",
                                                 *native_args(rows=torch.tensor(16))),
    }
    for name, repro in REPROS.items():
        try:
            repro()
            print(f"{name}: no error", flush=True)
        except Exception as err:
            print(f"{name}: {type(err).__name__}: {err}".replace("\\n", " "), flush=True)
    print("done", flush=True)
''')

# (exception class name that must be raised (or one of its bases' names), words the message must hold)
EXPECTED = {
    "paro_tensor_scale": ("TypeError", "scale"),
    "local_shape_larger": ("ValueError", "N=16 tokens"),
    "local_shape_smaller": ("ValueError", "N=16 tokens"),
    "index_past_n": ("ValueError", "below N=16"),
    "index_far_past_n": ("ValueError", "below N=16"),
    "op_index_past_n": ("ValueError", "below N=16"),
    "op_progression_wrong_grid": ("ValueError", "16 tokens"),
    "op_tiles_past_n": ("ValueError", "k_idx"),
    "op_tile_queries_past_n": ("ValueError", "q_idx"),
    "native_tensor_scale": ("NativeArgumentError", "scale must be"),
    "native_tensor_int": ("NativeArgumentError", "rows must be"),
}


@pytest.fixture(scope="module")
def crash_repros() -> tuple[int, dict[str, str], str]:
    """Run :data:`CHILD` once: (return code, {repro: printed outcome}, stderr)."""
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    lines = dict(line.split(": ", 1) for line in child.stdout.splitlines() if ": " in line)
    return child.returncode, lines, child.stderr


def test_the_crash_repros_exit_cleanly(crash_repros):
    returncode, lines, stderr = crash_repros
    assert returncode == 0, f"child ended with {returncode} (negative: killed by a signal); stderr: {stderr[-2000:]}"
    assert set(lines) == set(EXPECTED)


@needs_native
@pytest.mark.parametrize("name", list(EXPECTED))
def test_crash_repro_raises_a_named_python_error(crash_repros, name):
    returncode, lines, stderr = crash_repros
    assert name in lines, f"the child died before {name} (return code {returncode}): {stderr[-2000:]}"
    kind, words = EXPECTED[name]
    assert lines[name].startswith(f"{kind}: "), lines[name]
    assert words in lines[name], lines[name]


# ---- silent wrong results ----------------------------------------------------------------------------------------


def _qkv64(shape: tuple[int, ...], seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3)]


def test_paro_int_scale_equals_float_scale_and_the_reference():
    q, k, v = (t.float() for t in _qkv64((1, 2, 16, 8)))
    bitmap = torch.tensor([[[True, False], [True, True]], [[True, True], [False, True]]])
    by_int = paro_block_sparse_attention(q, k, v, bitmap, block=8, scale=1)
    by_float = paro_block_sparse_attention(q, k, v, bitmap, block=8, scale=1.0)
    assert torch.equal(by_int, by_float)
    allowed = bitmap_token_mask(bitmap, 8, 16)
    want = reference.attention(q.double(), k.double(), v.double(), mask=allowed, scale=1.0)
    torch.testing.assert_close(by_int.double(), want, rtol=1e-4, atol=2e-5)
    # the default scale would differ: an int taken as anything but 1.0 cannot pass
    assert (by_int - paro_block_sparse_attention(q, k, v, bitmap, block=8)).abs().max() > 1e-2


@needs_native
def test_local_attention_shape_mismatch_raises_in_process():
    q, k, v = _qkv64((1, 1, 16, 4))
    for shape in ((5, 5), (3, 3), (17,)):
        with pytest.raises(ValueError, match="N=16"):
            local_attention(q, k, v, masks.neighborhood_mask(3), shape)


# ---- strategies ----------------------------------------------------------------------------------------------------

LAYOUTS = ("contiguous", "tokens_first", "sliced", "padded", "broadcast_batch")


def laid_out(values: Tensor, layout: str, dtype: torch.dtype) -> Tensor:
    """``values`` ``(B, H, N, D)`` (float64) as a ``dtype`` tensor with the strides of ``layout``: contiguous, a
    transposed ``(B, N, H, D)`` buffer (a fused qkv projection's layout), every second element of the last axis,
    a window of a larger buffer, or batch entries sharing one buffer (stride 0; the values of batch 0)."""
    b, h, n, d = values.shape
    if layout == "contiguous":
        return values.to(dtype)
    if layout == "tokens_first":
        return values.transpose(1, 2).to(dtype).contiguous().transpose(1, 2)
    if layout == "sliced":
        buffer = torch.zeros(b, h, n, 2 * d, dtype=dtype)
        buffer[..., ::2] = values.to(dtype)
        return buffer[..., ::2]
    if layout == "padded":
        buffer = torch.zeros(b + 1, h + 1, n + 3, d + 2, dtype=dtype)
        buffer[1:, :h, 2 : n + 2, 1 : d + 1] = values.to(dtype)
        return buffer[1:, :h, 2 : n + 2, 1 : d + 1]
    return values[:1].to(dtype).expand(b, h, n, d)


@st.composite
def qkv_tensors(draw, tokens: int, dtypes=(torch.float32, torch.float64)) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v of ``tokens`` tokens: random batch, heads, head dims (v its own), dtype and a layout each."""
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    d, dv = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    dtype = draw(st.sampled_from(dtypes))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    values = [torch.randn(b, h, tokens, dim, generator=g, dtype=torch.float64) for dim in (d, d, dv)]
    return tuple(laid_out(t, draw(st.sampled_from(LAYOUTS)), dtype) for t in values)


SCALE_KINDS = ("none", "float", "int", "numpy64", "numpy32", "tensor")


@st.composite
def scales(draw) -> tuple[str, object]:
    """(kind, scale): None, a Python float, an int, a NumPy float64/float32 scalar, or a 0-dim tensor."""
    kind = draw(st.sampled_from(SCALE_KINDS))
    value = draw(st.floats(0.05, 1.5))
    return kind, {"none": None, "float": value, "int": 1, "numpy64": np.float64(value),
                  "numpy32": np.float32(value), "tensor": torch.tensor(value)}[kind]


@st.composite
def mask_cases(draw, families: tuple[str, ...]) -> tuple[Mask, tuple[int, ...], int]:
    """(mask, shape, prefix tokens): one of ``families`` with random parameters on a small grid it accepts."""
    family = draw(st.sampled_from(families))
    prefix = draw(st.integers(0, 2))
    if family in ("neighborhood", "neighborhood_causal"):
        ndim = draw(st.integers(1, 3))
        top_k, top_d = {1: (5, 2), 2: (3, 2), 3: (2, 1)}[ndim]
        kernel = [draw(st.integers(1, top_k)) for _ in range(ndim)]
        dilation = [draw(st.integers(1, top_d)) for _ in range(ndim)]
        stride = [draw(st.integers(1, kk)) for kk in kernel]
        causal = [draw(st.booleans()) for _ in range(ndim)]
        shape = tuple(draw(st.integers(kk * dd, kk * dd + 2)) for kk, dd in zip(kernel, dilation, strict=True))
        mask = masks.neighborhood_mask(tuple(kernel), tuple(stride), tuple(dilation), tuple(causal))
        return (mask & masks.causal_mask() if family == "neighborhood_causal" else mask), shape, prefix
    if family in ("window", "grid", "halo"):
        size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        shape = (size[0] * draw(st.integers(1, 3)), size[1] * draw(st.integers(1, 3)))
        if family == "halo":
            return masks.halo_mask(size, tuple(draw(st.integers(0, s)) for s in size)), shape, prefix
        return (masks.window_mask if family == "window" else masks.grid_mask)(size), shape, prefix
    if family == "axial":
        shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
        return masks.axial_mask(draw(st.integers(-len(shape), len(shape) - 1))), shape, prefix
    if family == "strip":
        width = draw(st.integers(1, 2))
        orientation = draw(st.sampled_from(("rows", "columns")))
        shape = [draw(st.integers(1, 5)), draw(st.integers(1, 5))]
        shape[0 if orientation == "rows" else 1] *= width
        return masks.strip_mask(orientation, width), tuple(shape), prefix
    if family == "sliding":
        shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=2)))
        return masks.sliding_window_mask(draw(st.integers(1, 6)), draw(st.booleans())), shape, prefix
    if family == "radial":
        shape = (draw(st.integers(2, 6)), draw(st.integers(1, 3)), draw(st.integers(1, 4)))
        return masks.radial_mask("code", block_size=draw(st.sampled_from((2, 4, 8)))), shape, prefix
    if family == "causal":
        return masks.causal_mask(), (draw(st.integers(1, 12)),), prefix
    return masks.full_mask(), tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))), prefix


PROGRESSIONS = ("neighborhood", "window", "grid", "halo", "axial", "strip", "sliding")
ALL_FAMILIES = (*PROGRESSIONS, "neighborhood_causal", "radial", "causal", "full")


def expected(q: Tensor, k: Tensor, v: Tensor, mask: Mask, shape: tuple[int, ...], prefix: int,
             scale: object) -> Tensor:
    """The float64 reference on the values of ``q, k, v``."""
    scale = None if scale is None else float(scale)
    return reference.attention(q.double(), k.double(), v.double(), mask=materialize(mask, shape, prefix),
                               scale=scale)


def assert_matches(got: Tensor, want: Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == dtype and got.shape == want.shape
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)


def check_entry(call, kind: str, want_fn, dtype: torch.dtype) -> None:
    """A tensor scale must raise TypeError naming ``scale``; every other kind equals the reference."""
    if kind == "tensor":
        with pytest.raises(TypeError, match="scale"):
            call()
        return
    out = call()
    assert_matches(out, want_fn(), dtype)


# ---- properties ----------------------------------------------------------------------------------------------------


@needs_native
@SETTINGS
@given(data=st.data())
def test_masked_attention_every_backend_that_accepts_the_call(data):
    mask, shape, prefix = data.draw(mask_cases(ALL_FAMILIES))
    n = prefix + math.prod(shape)
    q, k, v = data.draw(qkv_tensors(n, (torch.float32, torch.float64, torch.bfloat16)))
    kind, scale = data.draw(scales())
    want = expected(q, k, v, mask, shape, prefix, scale)
    ran = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(flex, "_failed", {"cpu"})  # eager FlexAttention: compiling it per example would take minutes
        for backend in BACKENDS:
            try:
                explain(mask, shape, prefix, dtype=q.dtype, backend=backend)
            except ValueError as refusal:
                with pytest.raises(ValueError, match=re.escape(str(refusal))):
                    masked_attention(q, k, v, mask, shape, prefix, backend=backend,
                                     scale=None if kind == "tensor" else scale)
                continue
            check_entry(lambda b=backend: masked_attention(q, k, v, mask, shape, prefix, backend=b, scale=scale),
                        kind, lambda: want, q.dtype)
            ran.append(backend)
    assert "auto" in ran and "reference" in ran and "dense" in ran
    if isinstance(mask, (SeparableMask, SlidingWindowMask)) and q.dtype != torch.bfloat16:
        assert "fused_tiles" in ran


@needs_native
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_masked_attention_gradients_on_strided_inputs(data):
    """Gradients of every differentiable engine that accepts the call, on strided float64 leaves."""
    mask, shape, prefix = data.draw(mask_cases(ALL_FAMILIES))
    n = prefix + math.prod(shape)
    q, k, v = data.draw(qkv_tensors(n, (torch.float64,)))
    weight = torch.randn(q.shape[:3] + (v.shape[-1],), generator=torch.Generator().manual_seed(1), dtype=q.dtype)
    allowed = materialize(mask, shape, prefix)

    def grads(fn) -> list[Tensor]:
        inputs = [x.detach().requires_grad_() for x in (q, k, v)]
        return torch.autograd.grad((fn(*inputs) * weight).sum(), inputs)

    want = grads(lambda *x: reference.attention(*x, mask=allowed))
    ran = []
    for backend in ENGINES:
        if backend in ("flex", "reference"):
            continue
        try:
            explain(mask, shape, prefix, dtype=q.dtype, requires_grad=True, backend=backend)
        except ValueError:
            continue
        got = grads(lambda *x, b=backend: masked_attention(*x, mask, shape, prefix, backend=b))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=lambda m, b=backend: f"{b}: {m}")
        ran.append(backend)
    if isinstance(mask, (SeparableMask, SlidingWindowMask)):
        assert "fused_tiles" in ran


@SETTINGS
@given(data=st.data())
def test_tiled_attention(data):
    mask, shape, prefix = data.draw(mask_cases(PROGRESSIONS + ("causal", "full")))
    assert isinstance(mask, (SeparableMask, SequenceMask))
    q, k, v = data.draw(qkv_tensors(prefix + math.prod(shape), (torch.float32, torch.float64, torch.bfloat16)))
    kind, scale = data.draw(scales())
    check_entry(lambda: tiled_attention(q, k, v, mask, shape, prefix, scale=scale), kind,
                lambda: expected(q, k, v, mask, shape, prefix, scale), q.dtype)


@SETTINGS
@given(data=st.data())
def test_local_attention_runs_where_explain_allows_and_returns_none_elsewhere(data):
    mask, shape, prefix = data.draw(mask_cases(PROGRESSIONS + ("neighborhood_causal", "radial")))
    q, k, v = data.draw(qkv_tensors(prefix + math.prod(shape), (torch.float32, torch.float64, torch.bfloat16)))
    kind, scale = data.draw(scales())
    try:
        explain(mask, shape, prefix, dtype=q.dtype, backend="per_query")
        runs = True
    except ValueError:
        runs = False
    if kind == "tensor":
        with pytest.raises(TypeError, match="scale"):
            local_attention(q, k, v, mask, shape, prefix, scale=scale)
        return
    out = local_attention(q, k, v, mask, shape, prefix, scale=scale)
    assert (out is not None) == runs
    if runs:
        assert_matches(out, expected(q, k, v, mask, shape, prefix, scale), q.dtype)


@SETTINGS
@given(data=st.data())
def test_axial_attention(data):
    mask, shape, prefix = data.draw(mask_cases(("axial",)))
    assert isinstance(mask, AxialMask)
    q, k, v = data.draw(qkv_tensors(prefix + math.prod(shape), (torch.float32, torch.float64, torch.bfloat16)))
    kind, scale = data.draw(scales())
    check_entry(lambda: axial_attention(q, k, v, mask.axis, shape, prefix, scale=scale), kind,
                lambda: expected(q, k, v, mask, shape, prefix, scale), q.dtype)


@SETTINGS
@given(data=st.data(), blocks=st.tuples(st.none() | st.integers(1, 8), st.none() | st.integers(1, 8)))
def test_block_sparse_attention(data, blocks):
    mask, shape, prefix = data.draw(mask_cases(ALL_FAMILIES))
    q, k, v = data.draw(qkv_tensors(prefix + math.prod(shape), (torch.float32, torch.float64, torch.bfloat16)))
    kind, scale = data.draw(scales())
    check_entry(lambda: block_sparse_attention(q, k, v, mask, shape, prefix, scale, *blocks), kind,
                lambda: expected(q, k, v, mask, shape, prefix, scale), q.dtype)


@st.composite
def key_lists(draw, b: int, h: int, rows: int, keys: int) -> tuple[Tensor, Tensor]:
    """(index ``(b, h, rows, width)`` int64, bool mask ``(b, h, rows, keys)``): per query, distinct keys ended by a
    negative entry (any value below N may follow it and must be ignored)."""
    width = draw(st.integers(1, keys + 1))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    index = torch.randint(0, keys, (b, h, rows, width), generator=g)
    allowed = torch.zeros(b, h, rows, keys, dtype=torch.bool)
    for pos in np.ndindex(b, h, rows):
        length = int(torch.randint(0, min(width, keys) + 1, (), generator=g))
        chosen = torch.randperm(keys, generator=g)[:length]
        index[pos][:length] = chosen
        if length < width:
            index[pos][length] = -int(torch.randint(1, 5, (), generator=g))
        allowed[pos][chosen] = True
    if draw(st.booleans()):  # a non-contiguous index
        index = index.transpose(0, 1).contiguous().transpose(0, 1)
    return index, allowed


@needs_native
@SETTINGS
@given(data=st.data())
def test_index_attention(data):
    n = data.draw(st.integers(1, 12))
    q, k, v = data.draw(qkv_tensors(n, (torch.float32, torch.float64, torch.bfloat16)))
    q = q[:, :, : data.draw(st.integers(1, n))]
    index, allowed = data.draw(key_lists(*q.shape[:3], n))
    kind, scale = data.draw(scales())
    if kind == "tensor":
        with pytest.raises(TypeError, match="scale"):
            index_attention(q, k, v, index, scale=scale)
        return
    out = index_attention(q, k, v, index, scale=scale)
    if q.dtype == torch.bfloat16:
        assert out is None
        return
    want = reference.attention(q.double(), k.double(), v.double(), mask=allowed,
                               scale=None if scale is None else float(scale))
    assert_matches(out, want, q.dtype)
    with torch.enable_grad():
        assert index_attention(q.requires_grad_(), k, v, index, scale=scale) is None  # autograd: not the kernel


@st.composite
def tile_lists(draw, tokens: int, prefix: int):
    """(TileList, bool mask ``(N, N)``): random tiles over the grid queries (each query in at most one tile), each
    with random key segments, some masked."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    grid = torch.randperm(tokens - prefix, generator=g) + prefix
    cuts = sorted(set(draw(st.lists(st.integers(0, len(grid)), max_size=4))) | {0, len(grid)})
    allowed = torch.zeros(tokens, tokens, dtype=torch.bool)
    described = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=False):
        queries = grid[lo:hi]
        if draw(st.booleans()) and hi - lo > 1:
            queries = queries[:-1]  # a query no tile names outputs 0
        segments = []
        keys_left = torch.randperm(tokens, generator=g)
        for part in torch.tensor_split(keys_left, draw(st.integers(1, 3))):
            if not part.numel():
                continue
            seg_mask = None
            if draw(st.booleans()):
                seg_mask = torch.rand(len(queries), len(part), generator=g) < 0.6
            segments.append((part.numpy(), None if seg_mask is None else seg_mask.numpy()))
            block = torch.ones(len(queries), len(part), dtype=torch.bool) if seg_mask is None else seg_mask
            allowed[queries[:, None], part[None, :]] |= block
        described.append((queries.numpy(), segments))
    allowed[:prefix] = True
    return build_tiles(described), allowed


@needs_native
@SETTINGS
@given(data=st.data())
def test_kernel_tile_attention(data):
    prefix = data.draw(st.integers(0, 2))
    n = prefix + data.draw(st.integers(1, 12))
    q, k, v = data.draw(qkv_tensors(n))
    tiles, allowed = data.draw(tile_lists(n, prefix))
    kind, scale = data.draw(scales())
    if kind == "tensor":
        with pytest.raises(TypeError, match="scale"):
            tile_attention(q, k, v, tiles, prefix, scale=scale)
        return
    want = reference.attention(q.double(), k.double(), v.double(), mask=allowed,
                               scale=None if scale is None else float(scale))
    assert_matches(tile_attention(q, k, v, tiles, prefix, scale=scale), want, q.dtype)


@needs_native
@SETTINGS
@given(data=st.data())
def test_paro_block_sparse_attention(data):
    block = data.draw(st.integers(1, 5))
    n = data.draw(st.integers(1, 14))
    q, k, v = data.draw(qkv_tensors(n, (torch.float32, torch.float64, torch.bfloat16)))
    nb = -(-n // block)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    bitmap = torch.rand(q.shape[1], nb, nb, generator=g) < data.draw(st.floats(0.0, 1.0))
    kind, scale = data.draw(scales())
    allowed = bitmap_token_mask(bitmap, block, n)
    check_entry(lambda: paro_block_sparse_attention(q, k, v, bitmap, block, scale=scale), kind,
                lambda: reference.attention(q.double(), k.double(), v.double(), mask=allowed,
                                            scale=None if scale is None else float(scale)), q.dtype)
