"""The one dispatch point (visattn.ops.dispatch): which engine each kind of call gets and why, refusals of forced
backends, every engine against the float64 reference (forward and gradients), the modules and mixers going
through it, and its cache of decisions."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import visattn
from visattn import masks
from visattn.masks import materialize
from visattn.nn import NeighborhoodAttention1d, NeighborhoodAttention2d, NeighborhoodAttention3d
from visattn.ops import ENGINES, Decision, explain, masked_attention, reference
from visattn.ops import dispatch as dispatch_module
from visattn.ops import masked as masked_module
from visattn.ops.engines import availability, flex
from visattn.ops.native import native_library
from visattn.testing import random_qkv

pytestmark = pytest.mark.usefixtures("one_thread")

NATIVE = all(native_library(lib) is not None for lib in ("tile_attention", "tile_attention_backward",
                                                         "local_attention"))
needs_native = pytest.mark.skipif(not NATIVE, reason="the C++ kernels are not built on this machine")

PROGRESSIONS = {
    "neighborhood": (masks.neighborhood_mask(7), (32, 32), 0),
    "neighborhood_3d": (masks.neighborhood_mask((3, 3, 3), stride=(1, 1, 2), dilation=(1, 2, 1),
                                                is_causal=(True, False, False)), (6, 8, 8), 1),
    "window": (masks.window_mask(8), (32, 32), 0),
    "grid": (masks.grid_mask(4), (32, 32), 0),
    "halo": (masks.halo_mask(8, 2), (32, 32), 1),
    "strip": (masks.strip_mask("rows", 2), (32, 32), 0),
    "sliding": (masks.sliding_window_mask(16), (1024,), 0),
    "axial": (masks.axial_mask(0), (32, 32), 1),
}
OTHERS = {  # (mask, shape, prefix, engine wherever the tensors live)
    "radial_sparse": (masks.radial_mask("code", block_size=8), (12, 5, 5), 1, "block_sparse"),
    "radial_dense": (masks.radial_mask(), (4, 6), 0, "dense"),
    "full": (masks.full_mask(), (8, 8), 1, "sdpa"),
    "causal": (masks.causal_mask(), (64,), 0, "sdpa_causal"),
    "causal_prefix": (masks.causal_mask(), (64,), 1, "dense"),
    "neighborhood_and_causal": (masks.neighborhood_mask(3) & masks.causal_mask(), (16, 16), 0, "dense"),
    "beyond_dense": (masks.neighborhood_mask(3) & masks.causal_mask(), (130, 130), 0, "flex"),
}


# ---- explain ---------------------------------------------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("name", list(PROGRESSIONS))
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_progression_masks_get_the_fused_tile_kernel_on_cpu(name, requires_grad, dtype):
    mask, shape, prefix = PROGRESSIONS[name]
    decision = explain(mask, shape, prefix, dtype=dtype, requires_grad=requires_grad)
    assert decision.engine == "fused_tiles"
    assert [n for n, _ in decision.passed_over] == ["sdpa", "sdpa_causal"]


@pytest.mark.parametrize("name", list(PROGRESSIONS))
@pytest.mark.parametrize("where", [{"device": "cuda"}, {"device": "meta"}, {"dtype": torch.bfloat16},
                                   {"dropout_p": 0.1}, {"device": "cuda", "requires_grad": True}])
def test_progression_masks_get_sdpa_engines_where_the_kernels_cannot_run(name, where):
    mask, shape, prefix = PROGRESSIONS[name]
    decision = explain(mask, shape, prefix, **where)
    assert decision.engine == ("sdpa_lines" if name == "axial" else "sdpa_tiles")
    why = dict(decision.passed_over)["fused_tiles"]
    if "dropout_p" in where:
        assert "dropout" in why
    elif "dtype" in where:
        assert "bfloat16" in why
    else:
        assert f"tensors on {where['device']}" in why


@pytest.mark.parametrize("name", list(OTHERS))
@pytest.mark.parametrize("where", [{}, {"device": "cuda"}, {"dtype": torch.bfloat16}, {"requires_grad": True}])
def test_other_masks(name, where):
    mask, shape, prefix, engine = OTHERS[name]
    if engine == "flex" and where.get("requires_grad"):
        engine = "dense"  # FlexAttention has no CPU backward
    decision = explain(mask, shape, prefix, **where)
    assert decision.engine == engine
    if engine in ("dense", "flex"):
        assert "block_sparse" in dict(decision.passed_over)
    if engine == "flex":
        assert "16900 tokens" in dict(decision.passed_over)["dense"]


@pytest.mark.parametrize("where", [{"requires_grad": True}, {"dropout_p": 0.1}])
def test_beyond_dense_limit_dense_takes_what_flex_cannot_run_on_the_cpu(where):
    mask, shape, prefix, _ = OTHERS["beyond_dense"]
    decision = explain(mask, shape, prefix, **where)
    assert decision.engine == "dense"
    with pytest.raises(ValueError, match="training on the CPU" if "requires_grad" in where else "dropout"):
        explain(mask, shape, prefix, backend="flex", **where)
    if "requires_grad" in where:
        assert explain(mask, shape, prefix, device="cuda", **where).engine == "flex"


def test_radial_with_dropout_leaves_block_sparse_for_dense():
    mask, shape, prefix, _ = OTHERS["radial_sparse"]
    decision = explain(mask, shape, prefix, dropout_p=0.1)
    assert decision.engine == "dense"
    assert "dropout" in dict(decision.passed_over)["block_sparse"]


@needs_native
def test_str_lists_the_engine_and_why_every_earlier_engine_was_passed_over():
    mask, shape, prefix = PROGRESSIONS["neighborhood"]
    text = str(explain(mask, shape, prefix, device="cuda"))
    assert text.splitlines() == [
        f"engine: sdpa_tiles ({ENGINES['sdpa_tiles'].summary})",
        "  not sdpa: the mask is not the full mask",
        "  not sdpa_causal: the mask is not the causal mask",
        "  not fused_tiles: tensors on cuda: the kernels are CPU code",
        "  not sdpa_lines: the mask is not axial",
    ]
    assert str(Decision("dense", "why", ())) == "engine: dense (why)"


def test_explain_checks_its_arguments():
    with pytest.raises(TypeError, match="mask must be"):
        explain("neighborhood", (4, 4))
    with pytest.raises(ValueError, match="backend must be"):
        explain(masks.full_mask(), (4, 4), backend="fastest")
    with pytest.raises(ValueError, match="window_size must divide"):
        explain(masks.window_mask(3), (4, 4))


# ---- forced backends -------------------------------------------------------------------------------------------


REFUSALS = [  # (mask, shape, prefix, backend, explain's keywords, words of the reason)
    (masks.neighborhood_mask(3), (6, 6), 0, "sdpa", {}, "the mask is not the full mask"),
    (masks.causal_mask(), (9,), 1, "sdpa_causal", {}, "prefix tokens see every token"),
    (masks.neighborhood_mask(3), (6, 6), 0, "sdpa_lines", {}, "the mask is not axial"),
    (masks.neighborhood_mask(3), (6, 6), 0, "fused_tiles", {"dtype": torch.bfloat16}, "dtype torch.bfloat16"),
    (masks.neighborhood_mask(3), (6, 6), 0, "fused_tiles", {"device": "cuda"}, "tensors on cuda"),
    (masks.neighborhood_mask(3), (6, 6), 0, "per_query", {"dropout_p": 0.2}, "attention dropout"),
    (masks.radial_mask(), (4, 6), 0, "fused_tiles", {}, "RadialMask is not separable per axis"),
    (masks.neighborhood_mask(3) & masks.causal_mask(), (6, 6), 0, "sdpa_tiles", {}, "AndMask is not separable"),
    (masks.causal_mask(), (9,), 0, "sdpa_tiles", {}, "full and causal sequence masks gain nothing"),
    (masks.radial_mask(), (4, 6), 0, "block_sparse", {"dropout_p": 0.2}, "attention dropout"),
    (masks.radial_mask(), (4, 6), 0, "flex", {"dropout_p": 0.2}, "FlexAttention has none"),
    (masks.radial_mask(), (4, 6), 0, "flex", {"requires_grad": True}, "training on the CPU"),
]


@pytest.mark.parametrize(("mask", "shape", "prefix", "backend", "where", "reason"), REFUSALS)
def test_forced_backend_that_cannot_run_raises_the_reason(mask, shape, prefix, backend, where, reason):
    message = f"backend='{backend}' cannot run this call: .*{re.escape(reason)}"
    with pytest.raises(ValueError, match=message):
        explain(mask, shape, prefix, backend=backend, **where)
    if "device" in where:
        return
    dtype = where.get("dtype", torch.float64)
    q, k, v = random_qkv(1, 2, prefix + math.prod(shape), 4, dtype=dtype)
    with pytest.raises(ValueError, match=message):
        masked_attention(q.requires_grad_(where.get("requires_grad", False)), k, v, mask, shape, prefix,
                         backend=backend, dropout_p=where.get("dropout_p", 0.0))


@pytest.mark.parametrize(("mask", "shape"), [(masks.neighborhood_mask(3) & masks.causal_mask(), (6, 6)),
                                             (masks.radial_mask(), (4, 6)), (masks.causal_mask(), (64,))])
def test_fast_raises_where_no_structured_engine_takes_the_mask(mask, shape):
    prefix = 1 if isinstance(mask, masks.CausalMask) else 0
    with pytest.raises(ValueError, match="no fast path"):
        explain(mask, shape, prefix, backend="fast")
    q, k, v = random_qkv(1, 1, prefix + math.prod(shape), 4)
    with pytest.raises(ValueError, match="no fast path"):
        masked_attention(q, k, v, mask, shape, prefix, backend="fast")


def test_fast_takes_the_structured_engine_where_there_is_one():
    assert explain(masks.neighborhood_mask(3), (6, 6), backend="fast", device="cuda").engine == "sdpa_tiles"
    assert explain(masks.radial_mask("code", block_size=8), (12, 5, 5), 1, backend="fast").engine == "block_sparse"


# ---- every engine against the reference ------------------------------------------------------------------------


ENGINE_CASES = {  # an engine -> a small call it accepts
    "sdpa": (masks.full_mask(), (3, 3), 1),
    "sdpa_causal": (masks.causal_mask(), (7,), 0),
    "fused_tiles": (masks.neighborhood_mask((3, 2), stride=(2, 1), dilation=(1, 2), is_causal=(False, True)),
                    (5, 6), 1),
    "per_query": (masks.neighborhood_mask(3), (5, 6), 1),
    "sdpa_lines": (masks.axial_mask(0), (4, 3), 1),
    "sdpa_tiles": (masks.halo_mask(2, 1), (4, 6), 1),
    "block_sparse": (masks.radial_mask("code", block_size=4), (6, 2, 3), 1),
    "dense": (masks.neighborhood_mask(3) & masks.causal_mask(), (5, 5), 1),
    "flex": (masks.window_mask(2), (4, 4), 1),
    "reference": (masks.grid_mask(2), (4, 6), 0),
}


@pytest.fixture
def engines_run(monkeypatch) -> list[str]:
    """The engines ``masked_attention`` runs while the test runs (``visattn.ops.masked.run_engine``, the name the
    callers use, wrapped to record them)."""
    names: list[str] = []
    run = dispatch_module.run_engine

    def recording(engine, *args, **kwargs):
        names.append(engine)
        return run(engine, *args, **kwargs)

    monkeypatch.setattr(masked_module, "run_engine", recording)
    return names


def test_every_engine_has_a_case():
    assert set(ENGINE_CASES) == set(ENGINES)


@pytest.mark.parametrize("engine", list(ENGINE_CASES))
def test_every_engine_equals_the_reference_forward_and_gradients(engine, engines_run, monkeypatch):
    if engine in ("fused_tiles", "per_query") and not NATIVE:
        pytest.skip("the C++ kernels are not built on this machine")
    monkeypatch.setattr(flex, "_failed", {"cpu"})  # eager FlexAttention (compiling it takes minutes)
    mask, shape, prefix = ENGINE_CASES[engine]
    q, k, v = random_qkv(2, 2, prefix + math.prod(shape), 5, seed=3, contiguous=False)
    v = v[..., :3]  # a head dim of its own
    weight = torch.randn(*q.shape[:3], 3, generator=torch.Generator().manual_seed(4), dtype=q.dtype)
    allowed = materialize(mask, shape, prefix)

    def run(fn):
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        out = fn(*leaves)
        return out, torch.autograd.grad((out * weight).sum(), leaves)

    want, want_grads = run(lambda *x: reference.attention(*x, mask=allowed))
    with torch.no_grad():
        torch.testing.assert_close(masked_attention(q, k, v, mask, shape, prefix, backend=engine), want.detach(),
                                   rtol=1e-10, atol=1e-10)
    assert engines_run == [engine]
    if engine == "flex":  # no CPU backward in PyTorch: refused before it runs
        with pytest.raises(ValueError, match="training on the CPU: FlexAttention has no CPU backward"):
            run(lambda *x: masked_attention(*x, mask, shape, prefix, backend=engine))
        return
    got, got_grads = run(lambda *x: masked_attention(*x, mask, shape, prefix, backend=engine))
    assert engines_run == [engine, engine]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


@needs_native
@pytest.mark.parametrize("engine", ["fused_tiles", "per_query"])
def test_kernel_engines_pass_gradcheck(engine):
    mask, shape, prefix = masks.neighborhood_mask(3, stride=2), (4, 5), 1
    q, k, v = (t.requires_grad_() for t in random_qkv(1, 2, prefix + 20, 3, seed=8))
    assert torch.autograd.gradcheck(lambda *x: masked_attention(*x, mask, shape, prefix, backend=engine), (q, k, v))


# ---- the modules go through the dispatch -----------------------------------------------------------------------


def _neighborhood_reference(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module``'s forward computed with the naive reference under its mask."""
    spatial = tuple(x.shape[1:-1])
    n = math.prod(spatial)
    qkv = module.qkv(x).reshape(x.shape[0], n, 3, module.num_heads, module.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    out = reference.attention(q, k, v, mask=materialize(module.mask, spatial, 0), scale=module.scale)
    return module.proj(out.transpose(1, 2).reshape(x.shape))


@needs_native
@pytest.mark.parametrize(("cls", "spatial", "kernel"), [(NeighborhoodAttention1d, (11,), 5),
                                                        (NeighborhoodAttention2d, (6, 7), 3),
                                                        (NeighborhoodAttention3d, (3, 4, 5), (3, 3, 1))])
@pytest.mark.parametrize("train", [False, True])
def test_natten_style_modules_end_on_the_fused_tile_kernel(cls, spatial, kernel, train, engines_run):
    torch.manual_seed(0)
    module = cls(12, 3, kernel, dilation=1).double().train(train)
    x = torch.randn(2, *spatial, 12, dtype=torch.float64, requires_grad=train)
    with torch.set_grad_enabled(train):
        out = module(x)
    assert engines_run == ["fused_tiles"]
    torch.testing.assert_close(out, _neighborhood_reference(module, x), rtol=1e-10, atol=1e-10)
    if train:
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        (want,) = torch.autograd.grad(_neighborhood_reference(module, x).square().sum(), x)
        torch.testing.assert_close(grad, want, rtol=1e-9, atol=1e-9)


MIXERS = [
    ("neighborhood", {"kernel_size": 3}),
    ("window", {"window_size": 3}),
    ("halo", {"block_size": 3, "halo_size": 1}),
    ("axial", {"axis": 0}),
]


@needs_native
@pytest.mark.parametrize(("mixer", "kwargs"), MIXERS, ids=[m for m, _ in MIXERS])
def test_attention_mixers_end_on_the_fused_tile_kernel(mixer, kwargs, engines_run):
    torch.manual_seed(0)
    module = visattn.Attention(16, 2, mixer=mixer, num_prefix_tokens=1, **kwargs).double()
    oracle = visattn.Attention(16, 2, mixer=mixer, num_prefix_tokens=1, backend="reference", **kwargs).double()
    oracle.load_state_dict(module.state_dict())
    x = torch.randn(2, 1 + 36, 16, dtype=torch.float64)
    out = module(x)
    assert engines_run == ["fused_tiles"]
    torch.testing.assert_close(out, oracle(x), rtol=1e-10, atol=1e-10)


# ---- the cache of decisions ------------------------------------------------------------------------------------


@needs_native
def test_decisions_are_remembered_until_cleared(monkeypatch):
    mask = masks.neighborhood_mask(3)
    q, k, v = random_qkv(1, 1, 36, 4, dtype=torch.float32)
    dispatch_module.clear_decisions()
    assert dispatch_module.choose(q, k, v, mask, (6, 6), 0, 0.0) == "fused_tiles"
    monkeypatch.setattr(availability, "kernels_ready", lambda library: False)
    assert dispatch_module.choose(q, k, v, mask, (6, 6), 0, 0.0) == "fused_tiles"  # remembered
    assert explain(mask, (6, 6)).engine == "sdpa_tiles"  # explain decides afresh
    dispatch_module.clear_decisions()
    assert dispatch_module.choose(q, k, v, mask, (6, 6), 0, 0.0) != "fused_tiles"
    monkeypatch.undo()
    dispatch_module.clear_decisions()
    assert dispatch_module.choose(q, k, v, mask, (6, 6), 0, 0.0) == "fused_tiles"


def test_choose_tells_training_and_dropout_apart():
    mask = masks.neighborhood_mask(3)
    q, k, v = random_qkv(1, 1, 36, 4, dtype=torch.float32)
    assert dispatch_module.choose(q, k, v, mask, (6, 6), 0, 0.5) == "sdpa_tiles"
    assert dispatch_module.choose(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, (6, 6), 0, 0.0) == "sdpa_tiles"
    assert dispatch_module.choose(q, k, v, mask, (6, 6), 0, 0.0, "dense") == "dense"
