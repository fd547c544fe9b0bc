"""InLine attention: rows sum to 1, efficient == paper equation, the dynamic local residual, gradients, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from visattn.nn import Attention, InLineMixer
from visattn.ops.linear_attention import ROW_BLOCK

FP64 = {"atol": 1e-10, "rtol": 1e-10}
KERNELS = {
    "identity": lambda x: x,
    "relu": lambda x: x.clamp_min(0),
    "leakyrelu": lambda x: torch.where(x >= 0, x, 0.01 * x),
    "exp": lambda x: torch.exp(x / 5),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def qkv(b, h, n, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) for _ in range(3))


def naive_inline_weights(q, k, kernel="identity"):
    """Han et al. Eq. 5 entry by entry: InL_ij = s phi(q_i).phi(k_j) / N - (1/N) sum_s s phi(q_i).phi(k_s) / N + 1/N."""
    phi = KERNELS[kernel]
    b, h, n, d = q.shape
    s = d ** -0.5
    w = torch.empty(b, h, n, n, dtype=q.dtype)
    for i in range(n):
        sims = (phi(q[:, :, i : i + 1]) * phi(k)).sum(-1) * s / n
        w[:, :, i] = sims - sims.sum(-1, keepdim=True) / n + 1.0 / n
    return w


def naive_local_residual(mixer: InLineMixer, v_grid, x, shape):
    """3 x 3 depthwise convolution with zero padding, kernels from the residual MLP on the token mean of x, written
    as a sum over the nine offsets (channel c = head * head_dim + d uses kernel entries 9c .. 9c + 8)."""
    b, h, n, d = v_grid.shape
    height, width = shape
    mean = x.mean(dim=1)
    hidden = torch.nn.functional.gelu(mixer.residual[0](mean.unsqueeze(-1)))
    kernels = mixer.residual[2](hidden).reshape(b, h, d, 3, 3)
    grid = v_grid.reshape(b, h, height, width, d)
    padded = torch.zeros(b, h, height + 2, width + 2, d, dtype=v_grid.dtype)
    padded[:, :, 1:-1, 1:-1] = grid
    out = torch.zeros_like(grid)
    for dy in range(3):
        for dx in range(3):
            out += padded[:, :, dy : dy + height, dx : dx + width] * kernels[:, :, None, None, :, dy, dx]
    return out.reshape(b, h, n, d)


def randomized(mixer: InLineMixer, seed: int = 0) -> InLineMixer:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mixer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return mixer.double()


@settings(max_examples=25, deadline=None)
@given(b=st.integers(2, 3), h=st.integers(1, 3), n=st.integers(0, 15).map(lambda x: 2 * x + 1), d=st.integers(1, 8),
       kernel=st.sampled_from(sorted(KERNELS)), seed=st.integers(0, 1000))
def test_efficient_form_equals_the_paper_equation_and_rows_sum_to_one(b, h, n, d, kernel, seed):
    q, k, v = qkv(b, h, n, d, seed)
    mixer = InLineMixer(dim=h * d, num_heads=h, head_dim=d, kernel=kernel, local_residual=False)
    weights = naive_inline_weights(q, k, kernel)
    torch.testing.assert_close(mixer(q, k, v, n), weights @ v, **FP64)
    torch.testing.assert_close(mixer.attention_weights(q, k, n), weights, **FP64)
    torch.testing.assert_close(weights.sum(-1), torch.ones(b, h, n, dtype=torch.float64), **FP64)


def test_more_tokens_than_one_row_block():
    n = ROW_BLOCK + 3
    q, k, v = qkv(1, 1, n, 2)
    mixer = InLineMixer(dim=2, num_heads=1, head_dim=2, kernel="relu", local_residual=False)
    torch.testing.assert_close(mixer(q, k, v, n), naive_inline_weights(q, k, "relu") @ v, **FP64)


def test_weights_can_be_negative_and_are_injective_in_query_scale():
    q, k, _ = qkv(1, 1, 9, 4)
    mixer = InLineMixer(dim=4, num_heads=1, head_dim=4, local_residual=False)
    w = mixer.attention_weights(q, k, 9)
    assert (w < 0).any()
    w2 = mixer.attention_weights(2 * q, k, 9)
    assert not torch.allclose(w, w2)


@pytest.mark.parametrize("prefix", [0, 1])
def test_local_residual_is_a_dynamic_depthwise_conv_on_the_grid(prefix):
    b, h, d, shape = 2, 2, 3, (3, 5)
    n = prefix + 15
    q, k, v = qkv(b, h, n, d, seed=4)
    x = torch.randn(b, n, 10, dtype=torch.float64)
    mixer = randomized(InLineMixer(dim=10, num_heads=h, head_dim=d))
    attention = naive_inline_weights(q, k) @ v
    expected = attention.clone()
    expected[:, :, prefix:] += naive_local_residual(mixer, v[:, :, prefix:], x, shape)
    torch.testing.assert_close(mixer(q, k, v, shape, x=x), expected, **FP64)


def test_residual_parameters_have_the_released_names_and_shapes():
    mixer = InLineMixer(dim=64, num_heads=4, head_dim=16)
    shapes = {name: tuple(p.shape) for name, p in mixer.named_parameters()}
    assert shapes == {"residual.0.weight": (64, 16, 1), "residual.0.bias": (64,),
                      "residual.2.weight": (576, 16, 1), "residual.2.bias": (576,)}


def test_gradcheck():
    q, k, v = (t.requires_grad_() for t in qkv(2, 1, 4, 2, seed=2))
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    mixer = randomized(InLineMixer(dim=2, num_heads=1, head_dim=2))
    assert torch.autograd.gradcheck(lambda q, k, v, x: mixer(q, k, v, (2, 2), x=x), (q, k, v, x))


def test_attention_module_passes_the_layer_input():
    layer = Attention(32, 4, mixer="inline", num_prefix_tokens=1)
    assert layer.mixer.uses_input and layer.mixer.residual is not None
    x = torch.randn(2, 17, 32)
    layer(x).sum().backward()
    assert layer.mixer.residual[2].weight.grad.abs().sum() > 0
    spec = visattn.get_mixer_spec("inline")
    assert spec.family == "reformulated" and spec.paper.arxiv == "2412.06590"


def test_bad_input_errors_name_the_argument():
    q, k, v = qkv(1, 2, 9, 2)
    with pytest.raises(ValueError, match="kernel must be one of 'identity', 'relu', 'leakyrelu', 'exp', got 'elu'"):
        InLineMixer(kernel="elu")
    with pytest.raises(ValueError, match="dim must be divisible by num_heads"):
        InLineMixer(dim=10, num_heads=4, head_dim=2)
    with pytest.raises(ValueError, match=r"attn_drop must be in \[0, 1\), got 1.0"):
        InLineMixer(attn_drop=1.0)
    mixer = InLineMixer(dim=4, num_heads=2, head_dim=2).double()
    with pytest.raises(ValueError, match="x .* is required by InLine's local residual"):
        mixer(q, k, v, (3, 3))
    with pytest.raises(ValueError, match="needs a 2-D shape"):
        mixer(q, k, v, (9,), x=torch.randn(1, 9, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x must be shaped \(B=1, N, C=4\)"):
        mixer(q, k, v, (3, 3), x=torch.randn(1, 9, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="attn_mask is not supported by InLineMixer"):
        mixer(q, k, v, (3, 3), attn_mask=torch.ones(9, 9, dtype=torch.bool))
