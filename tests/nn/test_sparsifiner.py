"""Sparsifiner (arXiv 2303.13755): predictor, mask, reconstruction loss and sparse execution."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from visattn.nn.sparsifiner import SparsifinerMixer


def make(heads: int, d: int, n: int, **kw) -> SparsifinerMixer:
    torch.manual_seed(0)
    kw.setdefault("reduce_n_factor", 2)  # N/2 >= 8 basis rows, so top-8 and the top-k keys have no ties
    mixer = SparsifinerMixer(num_heads=heads, head_dim=d, num_tokens=n, **kw).double()
    with torch.no_grad():  # spread the basis so that the 0.02 threshold keeps part of it
        mixer.proj_back_n.normal_(0.0, 0.05)
    return mixer


def qkv(b: int, h: int, n: int, d: int, seed: int = 0, grad: bool = False):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=gen, dtype=torch.float64, requires_grad=grad) for _ in range(3)]


def naive_mask(m: SparsifinerMixer, q, k, prefix: int) -> torch.Tensor:
    """The paper's predictor written out: low-rank coef, top-8, |basis| thresholded, top ceil(0.25 N) keys."""
    n = q.shape[2]
    qp = q[:, :, prefix:] @ m.proj_q.weight.T + m.proj_q.bias
    kp = k @ m.proj_k.weight.T + m.proj_k.bias
    coef = torch.softmax(qp @ (kp.transpose(-2, -1) @ m.proj_n) / math.sqrt(m.num_heads), dim=-1)
    keep = coef >= coef.topk(8, dim=-1)[0][..., -1:]
    coef = coef * keep
    basis = m.proj_back_n.abs().T
    basis = torch.where(basis < 0.02, torch.zeros_like(basis), basis)
    approx = coef @ basis
    kth = approx.topk(math.ceil(0.25 * n), dim=-1)[0][..., -1:]
    rows = approx >= kth
    return torch.cat([torch.ones(*q.shape[:2], prefix, n, dtype=torch.bool), rows], dim=2)


def naive_attention(q, k, v, mask):
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


@settings(max_examples=20, deadline=None)
@given(side=st.integers(4, 7), prefix=st.integers(0, 2), batch=st.integers(1, 2), seed=st.integers(0, 1000))
def test_sparse_execution_equals_naive_masked_attention(side: int, prefix: int, batch: int, seed: int) -> None:
    n = side * side + prefix
    m = make(2, 8, n)
    q, k, v = qkv(batch, 2, n, 8, seed)
    mask = naive_mask(m, q, k, prefix)
    assert torch.equal(m.attention_mask(q, k, (side, side)), mask)
    expected = naive_attention(q, k, v, mask)
    torch.testing.assert_close(m(q, k, v, (side, side)), expected, rtol=1e-10, atol=1e-10)
    m.backend = "dense"
    torch.testing.assert_close(m(q, k, v, (side, side)), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n,prefix", [(50, 1), (37, 0), (197, 1)])
def test_mask_keeps_ceil_quarter_keys_per_row_and_cls_row_dense(n: int, prefix: int) -> None:
    m = make(3, 8, n)
    q, k, _ = qkv(2, 3, n, 8)
    mask = m.attention_mask(q, k, n - prefix)
    counts = mask.sum(-1)
    assert (counts[:, :, prefix:] == math.ceil(0.25 * n)).all()
    assert (counts[:, :, :prefix] == n).all()


def test_mask_carries_no_gradient_and_sparse_path_has_gradients() -> None:
    m = make(2, 4, 17)
    q, k, v = qkv(2, 2, 17, 4, grad=True)
    mask = m.attention_mask(q, k, 16)
    assert not mask.requires_grad and mask.grad_fn is None
    out = m(q, k, v, 16)
    out.square().sum().backward()
    assert m.proj_n.grad is None and m.proj_q.weight.grad is None  # only the loss trains the predictor
    tiny = make(1, 2, 16)
    assert torch.autograd.gradcheck(lambda a, b, c: tiny(a, b, c, 16), qkv(1, 1, 16, 2, seed=3, grad=True))


def test_reconstruction_loss_matches_definition_and_decreases_on_toy_fit() -> None:
    torch.manual_seed(0)
    n, shape = 17, (4, 4)
    m = SparsifinerMixer(num_heads=2, head_dim=8, num_tokens=n, reduce_n_factor=2)
    q, k, _ = (t.float() for t in qkv(4, 2, n, 8, seed=1))
    target = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    coef = torch.softmax((m.proj_q(q[:, :, 1:]) @ (m.proj_k(k).transpose(-2, -1) @ m.proj_n)) / math.sqrt(2), -1)
    by_hand = ((coef @ m.proj_back_n.T - target[:, :, 1:]) ** 2).sum()
    torch.testing.assert_close(m.reconstruction_loss(q, k, shape), by_hand)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = m.reconstruction_loss(q, k, shape).item()
    for _ in range(150):
        opt.zero_grad()
        loss = m.reconstruction_loss(q, k, shape)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_registry_and_attention_module() -> None:
    layer = visattn.Attention(32, 4, mixer="sparsifiner", num_tokens=17, num_prefix_tokens=1)
    assert isinstance(layer.mixer, SparsifinerMixer) and layer.mixer.head_dim == 8
    x = torch.randn(2, 17, 32)
    assert layer(x).shape == (2, 17, 32)
    spec = visattn.registry.get_mixer_spec("sparsifiner")
    assert spec.family == "reformulated" and spec.paper_key == "sparsifiner"


def test_attention_weights_rows_sum_to_one_on_the_mask() -> None:
    m = make(2, 4, 17)
    q, k, _ = qkv(1, 2, 17, 4)
    w = m.attention_weights(q, k, 16)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 17, dtype=torch.float64))
    assert ((w > 0) <= m.attention_mask(q, k, 16)).all()


def test_bad_input_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="keep_rate"):
        SparsifinerMixer(keep_rate=0.0)
    with pytest.raises(ValueError, match="backend"):
        SparsifinerMixer(backend="magic")
    with pytest.raises(ValueError, match="num_tokens"):
        SparsifinerMixer(num_tokens=0)
    m = make(2, 4, 10)
    q, k, v = qkv(1, 2, 11, 4)
    with pytest.raises(ValueError, match="num_tokens=10"):
        m(q, k, v, 11)
    q, k, v = qkv(1, 2, 10, 4)
    with pytest.raises(ValueError, match="attn_mask"):
        m(q, k, v, 10, attn_mask=torch.ones(10, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="target"):
        m.reconstruction_loss(q, k, 10, target=torch.ones(3, 3))
