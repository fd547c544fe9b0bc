"""visattn's kernels as PyTorch custom operators (visattn.ops.engines.kernel_ops): ``torch.library.opcheck`` on
each (schema, fake kernel against the real one, autograd registration, AOT dispatch with dynamic shapes), shapes on
the meta device, tile lists refused before native code, and double backward refused with a clear error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visattn import masks
from visattn.ops.engines import fused_tiles, kernel_ops
from visattn.ops.engines.block_sparse import block_tiles
from visattn.ops.engines.fused_tiles import build_tiles
from visattn.ops.native import native_library
from visattn.testing import random_qkv

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(any(native_library(lib) is None for lib in ("tile_attention", "tile_attention_backward",
                                                                      "local_attention")),
                       reason="the C++ kernels are not built on this machine"),
]

OPS = torch.ops.visattn
NEIGHBORHOOD = masks.neighborhood_mask(3)
RADIAL = masks.radial_mask("code", block_size=4)


def qkv(tokens: int, requires_grad: bool = False, dv: int = 3, contiguous: bool = False) -> list[torch.Tensor]:
    """Strided float64 q, k, v ``(2, 2, tokens, 4)`` (v ``dv`` wide)."""
    q, k, v = random_qkv(2, 2, tokens, 4, seed=1, contiguous=contiguous)
    return [t.detach().requires_grad_(requires_grad) for t in (q, k, v[..., :dv])]


def tile_tensors() -> tuple:
    """A tile list of two tiles over 10 tokens: one masked segment, one shared key."""
    rng = np.random.default_rng(0)
    tiles = build_tiles([
        (np.array([0, 3, 4]), [(np.array([0, 1, 2, 5]), rng.random((3, 4)) < 0.7), (np.array([9]), None)]),
        (np.array([7, 8, 9, 1]), [(np.array([5, 6, 7, 8, 9]), None)]),
    ])
    return tiles, (tiles.q_ptr, tiles.q_idx, tiles.seg_ptr, tiles.key_ptr, tiles.k_idx, tiles.mask_off, tiles.masks)


def _progression_case(training: bool, engine: str = "fused_tiles"):
    return (*qkv(1 + 16, training), NEIGHBORHOOD.key, [4, 4], 1, 0.5, training, engine)


def _progression_backward_case():
    args = _progression_case(True)
    with torch.no_grad():
        out, lse, route = OPS.progression_attention(*args)
    q, k, v = (t.detach() for t in args[:3])
    grad_out = torch.randn_like(out)
    return (grad_out, q, k, v, out, lse, route, NEIGHBORHOOD.key, [4, 4], 1, 0.5)


def _tile_list_case(training: bool):
    return (*qkv(10, training), *tile_tensors()[1], 0.5, training)


def _tile_list_backward_case():
    args = _tile_list_case(True)
    with torch.no_grad():
        out, lse = OPS.tile_list_attention(*args)
    q, k, v = (t.detach() for t in args[:3])
    return (torch.randn_like(out), q, k, v, out, lse, *tile_tensors()[1], 0.5)


def _index_case():
    q, k, v = qkv(9)
    index = torch.randint(0, 9, (2, 2, 9, 4), generator=torch.Generator().manual_seed(2))
    index[0, 1, 3, 2] = -1
    return (q, k, v, index, 0.5)


CASES = {
    "progression_training": (OPS.progression_attention.default, lambda: _progression_case(True)),
    "progression_inference": (OPS.progression_attention.default, lambda: _progression_case(False)),
    "progression_per_query": (OPS.progression_attention.default, lambda: _progression_case(True, "per_query")),
    "progression_backward": (OPS.progression_attention_backward.default, _progression_backward_case),
    "tile_list_training": (OPS.tile_list_attention.default, lambda: _tile_list_case(True)),
    "tile_list_inference": (OPS.tile_list_attention.default, lambda: _tile_list_case(False)),
    "tile_list_backward": (OPS.tile_list_attention_backward.default, _tile_list_backward_case),
    "block_tiles": (OPS.block_tile_attention.default,
                    lambda: (*qkv(1 + 32), RADIAL.key, [4, 2, 4], 1, 0.5, 4, 2)),
    "bitmap_tiles": (OPS.bitmap_tile_attention.default,
                     lambda: (*qkv(10), torch.tensor([[[True, False, True]] * 3, [[False, True, True]] * 3]), 4,
                              0.5)),
    "index": (OPS.index_attention.default, _index_case),
}


@pytest.mark.parametrize("name", list(CASES))
def test_opcheck(name):
    op, case = CASES[name]
    torch.library.opcheck(op, case())


@pytest.mark.parametrize("name", list(CASES))
def test_meta_device_gives_the_shapes_of_the_real_op(name):
    """Shapes, dtypes and strides of the fake kernel equal the real op's, and the real op's output strides do not
    depend on its inputs' (inductor checks them against the fake kernel's, which saw other input strides)."""
    op, case = CASES[name]
    args = case()
    with torch.no_grad():
        real = op(*args)
        meta = op(*(a.detach().to("meta") if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                    for a in args))
        dense = op(*(a.detach().contiguous() if isinstance(a, torch.Tensor) else a for a in args))
    real = real if isinstance(real, tuple) else (real,)
    meta = meta if isinstance(meta, tuple) else (meta,)
    dense = dense if isinstance(dense, tuple) else (dense,)
    assert [r.stride() for r in real] == [d.stride() for d in dense]
    assert any(not a.is_contiguous() for a in args[:3])
    # tensors of q's dtype on q's device; the 0-dim int64 route of the kernels stays on the CPU
    assert [m.device.type for m in meta] == ["meta" if r.is_floating_point() else "cpu" for r in real]
    assert [(m.shape, m.dtype, m.stride()) for m in meta] == [(r.shape, r.dtype, r.stride()) for r in real]


def test_training_outputs_are_deterministic_and_prefix_rows_zero():
    """No uninitialised memory in an output: two runs agree bit for bit, and the rows no tile computes are 0."""
    args = _progression_case(True)
    with torch.no_grad():
        first, second = OPS.progression_attention(*args), OPS.progression_attention(*args)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(first[0][:, :, :1], torch.zeros_like(first[0][:, :, :1]))


# ---- tile lists are checked before native code ---------------------------------------------------------------


def _changed(**changes: torch.Tensor) -> tuple:
    tensors = dict(zip(("q_ptr", "q_idx", "seg_ptr", "key_ptr", "k_idx", "mask_off", "masks"), tile_tensors()[1],
                       strict=True))
    tensors.update(changes)
    return tuple(tensors.values())


def _tiles():
    return tile_tensors()[0]


BAD_TILES = {
    "q_idx past N": (lambda: _changed(q_idx=_tiles().q_idx.clone().index_fill_(0, torch.tensor([2]), 10)),
                     "q_idx must hold token indices in \\[0, 10\\)"),
    "q_idx negative": (lambda: _changed(q_idx=_tiles().q_idx.clone().index_fill_(0, torch.tensor([0]), -1)),
                       "q_idx must hold token indices"),
    "k_idx past N": (lambda: _changed(k_idx=_tiles().k_idx.clone().index_fill_(0, torch.tensor([4]), 1 << 40)),
                     "k_idx must hold token indices in \\[0, 10\\)"),
    "q_ptr falls": (lambda: _changed(q_ptr=torch.tensor([0, 8, 7])), "q_ptr must rise from 0 to 7"),
    "q_ptr not from 0": (lambda: _changed(q_ptr=torch.tensor([1, 3, 7])), "q_ptr must rise from 0"),
    "key_ptr falls": (lambda: _changed(key_ptr=torch.tensor([0, 5, 4, 10])), "key_ptr must rise from 0 to 10"),
    "key_ptr past k_idx": (lambda: _changed(key_ptr=torch.tensor([0, 4, 5, 11])), "key_ptr must rise from 0 to 10"),
    "seg_ptr falls": (lambda: _changed(seg_ptr=torch.tensor([0, 3, 2])), "seg_ptr must rise"),
    "mask_off past masks": (lambda: _changed(mask_off=torch.tensor([8, -1, -1])), "mask_off points past the end"),
    "masks too short": (lambda: _changed(masks=_tiles().masks[:-1]), "mask_off points past the end"),
    "ptr lengths": (lambda: _changed(seg_ptr=torch.tensor([0, 2])), "do not describe one tile list"),
    "int32 index": (lambda: _changed(k_idx=_tiles().k_idx.int()), "k_idx must be a 1-D int64 CPU tensor"),
    "2-d pointer": (lambda: _changed(q_ptr=_tiles().q_ptr[None]), "q_ptr must be a 1-D int64 CPU tensor"),
    "float masks": (lambda: _changed(masks=_tiles().masks.float()), "masks must be a 1-D uint8 tensor"),
}


@pytest.fixture
def no_native(monkeypatch):
    """Fail the test if a kernel is called."""

    def called(*args, **kwargs):
        raise AssertionError("native code reached")

    monkeypatch.setattr(fused_tiles, "run_tiles", called)
    monkeypatch.setattr(fused_tiles, "run_tiles_backward", called)


def test_the_tile_list_under_test_is_valid():
    q, k, v = qkv(10)
    out, _ = OPS.tile_list_attention(q, k, v, *tile_tensors()[1], 0.5, False)
    assert out.shape == (2, 2, 10, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(BAD_TILES))
def test_bad_tile_lists_raise_before_native_code(name, no_native):
    tensors, message = BAD_TILES[name]
    q, k, v = qkv(10)
    with pytest.raises(ValueError, match=message):
        OPS.tile_list_attention(q, k, v, *tensors(), 0.5, False)
    out = torch.zeros(2, 2, 10, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        OPS.tile_list_attention_backward(out, q, k, v, out, out[..., 0], *tensors(), 0.5)


@pytest.mark.parametrize(("call", "message"), [
    (lambda q, k, v: OPS.progression_attention(q, k, v, NEIGHBORHOOD.key, [4, 4], 0, 0.5, False, "fused_tiles"),
     "q has 17 tokens"),
    (lambda q, k, v: OPS.progression_attention(q, k, v, NEIGHBORHOOD.key, [4, 4], 1, math.nan, False, "fused_tiles"),
     "scale must be finite"),
    (lambda q, k, v: OPS.progression_attention(q, k, v, NEIGHBORHOOD.key, [4, 4], 1, 0.5, False, "tiles"),
     "engine must be"),
    (lambda q, k, v: OPS.progression_attention(q.float(), k, v, NEIGHBORHOOD.key, [4, 4], 1, 0.5, False,
                                               "fused_tiles"), "float32 or float64 like the others"),
    (lambda q, k, v: OPS.progression_attention(q, k, v, RADIAL.key, [17], 0, 0.5, False, "fused_tiles"),
     "no per-axis progression layout"),
    (lambda q, k, v: OPS.block_tile_attention(*qkv(33), RADIAL.key, [4, 2, 4], 1, math.inf, 4, 2),
     "scale must be finite"),
    (lambda q, k, v: OPS.bitmap_tile_attention(q, k, v, torch.ones(2, 2, 2, dtype=torch.bool), 4, 0.5),
     "bitmap must be bool of shape"),
    (lambda q, k, v: OPS.index_attention(q, k, v, torch.zeros(2, 2, 17, 3, dtype=torch.int32), 0.5),
     "index must be int64"),
    (lambda q, k, v: OPS.index_attention(q, k, v, torch.full((2, 2, 17, 3), 17), 0.5), "below N=17"),
    (lambda q, k, v: OPS.index_attention(q, k[:, :1], v[:, :1], torch.zeros(2, 2, 17, 3, dtype=torch.int64), 0.5),
     "do not fit together"),
])
def test_operators_check_their_arguments_before_native_code(call, message, no_native, monkeypatch):
    def called(*args, **kwargs):
        raise AssertionError("native code reached")

    monkeypatch.setattr(kernel_ops.per_query, "index_forward", called)
    q, k, v = qkv(17)
    with pytest.raises((ValueError, TypeError), match=message):
        call(q, k, v)


def test_bitmap_operator_refuses_keys_of_another_length():
    q, k, v = (torch.randn(1, 2, 16, 4, dtype=torch.float64) for _ in range(3))
    with pytest.raises(ValueError, match="self-attention"):
        OPS.bitmap_tile_attention(q, k[:, :, :8], v[:, :, :8], torch.ones(2, 4, 4, dtype=torch.bool), 4, 0.5)
    with pytest.raises(ValueError, match="block must be"):
        OPS.bitmap_tile_attention(q, k, v, torch.ones(2, 4, 4, dtype=torch.bool), 0, 0.5)


@pytest.mark.parametrize("misfit", ["k_heads", "k_batch", "k_head_dim", "v_tokens"])
def test_progression_operator_refuses_q_k_v_that_do_not_fit(misfit, monkeypatch):
    """The kernels index k and v with q's batch and heads and k with q's head dim: a misfit would read out of
    bounds, so it is refused before native code (forward and backward)."""
    def called(*args, **kwargs):
        raise AssertionError("native code reached")

    monkeypatch.setattr(kernel_ops.fused_tiles, "run_tiles", called)
    monkeypatch.setattr(kernel_ops.fused_tiles, "run_tiles_backward", called)
    q, k, v = (torch.randn(2, 2, 16, 4, dtype=torch.float64) for _ in range(3))
    k, v = {"k_heads": (k[:, :1], v[:, :1]), "k_batch": (k[:1], v[:1]), "k_head_dim": (k[..., :3], v),
            "v_tokens": (k, v[:, :, :9])}[misfit]
    with pytest.raises(ValueError, match="do not fit together"):
        OPS.progression_attention(q, k, v, NEIGHBORHOOD.key, [4, 4], 0, 0.5, True, "fused_tiles")
    out, lse = torch.zeros(2, 2, 16, v.shape[-1], dtype=torch.float64), torch.zeros(2, 2, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="do not fit together"):
        OPS.progression_attention_backward(out, q, k, v, out, lse, torch.tensor(0), NEIGHBORHOOD.key, [4, 4], 0, 0.5)


# ---- double backward -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["progression", "per_query", "tile_list"])
def test_double_backward_raises_a_clear_error(which):
    if which == "tile_list":
        q, k, v = qkv(10, True)
        out = kernel_ops.tile_attention(q, k, v, tile_tensors()[0])
    else:
        q, k, v = qkv(1 + 16, True)
        engine = "per_query" if which == "per_query" else "fused_tiles"
        out = OPS.progression_attention(q, k, v, NEIGHBORHOOD.key, [4, 4], 1, 0.5, True, engine)[0]
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out.square().sum(), (q, k, v), create_graph=True)
    # a first-order gradient still works
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)


def test_inference_op_has_no_backward():
    q, k, v = qkv(1 + 16, True)
    out = OPS.progression_attention(q, k, v, NEIGHBORHOOD.key, [4, 4], 1, 0.5, False, "fused_tiles")[0]
    with pytest.raises(RuntimeError, match="training=False"):
        out.sum().backward()


def test_block_tiles_of_the_op_are_the_planners():
    """``block_tile_attention`` equals ``tile_attention`` over :func:`block_tiles` (same plan, same kernel)."""
    q, k, v = qkv(1 + 32)
    got = OPS.block_tile_attention(q, k, v, RADIAL.key, [4, 2, 4], 1, 0.5, 4, 2)
    want = kernel_ops.tile_attention(q, k, v, block_tiles(RADIAL, (4, 2, 4), 1, 4, 2), scale=0.5)
    torch.testing.assert_close(got[:, :, 1:], want[:, :, 1:], rtol=0, atol=0)
