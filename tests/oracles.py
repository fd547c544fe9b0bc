"""Naive token-by-token oracles shared by the function tests (tests/ops) and the module tests (tests/nn).

Written from the papers' equations, sharing no code with ``visattn.ops``. ``tests/conftest.py`` puts this folder on
``sys.path`` so that test files can ``from oracles import ...``.
"""

from __future__ import annotations

import math

import torch

PHI = {"elu+1": lambda x: torch.where(x > 0, x + 1, torch.exp(x)), "relu": lambda x: x.clamp_min(0)}
"""The linear-attention feature maps written out: elu(x) + 1 and relu(x)."""


def seeded_qkv(b, h, n, d, dtype=torch.float64, seed=0, dv=None, scale=1.0):
    """Seeded standard-normal q, k ``(b, h, n, d)`` and v ``(b, h, n, dv or d)``, times ``scale``."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(b, h, n, e, generator=gen, dtype=dtype) for e in (d, d, dv or d))


def naive_linear(q, k, v, feature_map="elu+1", is_causal=False, eps=1e-6):
    """Katharopoulos et al. Eq. 6 / 9 token by token: y_i = sum_j phi(q_i).phi(k_j) v_j / (sum_j phi(q_i).phi(k_j)
    + eps), j over all keys or j <= i."""
    phi = PHI[feature_map]
    fq, fk = phi(q), phi(k)
    out = torch.zeros_like(v)
    n = q.shape[2]
    for i in range(n):
        last = i + 1 if is_causal else n
        sims = (fq[:, :, i : i + 1] * fk[:, :, :last]).sum(-1)
        out[:, :, i] = (sims.unsqueeze(-1) * v[:, :, :last]).sum(2) / (sims.sum(-1, keepdim=True) + eps)
    return out


def naive_l2vit(q, k, v, tau, clamp=100.0):
    """L2ViT's enhanced linear attention token by token: out_i = sum_j (relu(q_i).relu(k_j)) v_j tau_h /
    max(sum_j relu(q_i).relu(k_j), clamp)."""
    q, k = q.clamp_min(0), k.clamp_min(0)
    out = torch.zeros_like(v)
    for i in range(q.shape[2]):
        sims = (q[:, :, i : i + 1] * k).sum(-1)
        denominator = torch.maximum(sims.sum(-1), torch.tensor(clamp, dtype=q.dtype))
        out[:, :, i] = (sims.unsqueeze(-1) * v).sum(2) * tau.reshape(1, -1, 1) / denominator.unsqueeze(-1)
    return out


def naive_taylor(q, k, v, is_causal):
    """a_ij = (1 + s + s^2/2) / sum_l (...) over visible l, s = q_i . k_j / sqrt(d), pair by pair."""
    b, h, n, d = q.shape
    weights = torch.zeros(b, h, n, n, dtype=q.dtype)
    for i in range(n):
        for j in range(i + 1 if is_causal else n):
            s = (q[..., i, :] * k[..., j, :]).sum(-1) / math.sqrt(d)
            weights[..., i, j] = 1 + s + s * s / 2
    weights = weights / weights.sum(-1, keepdim=True)
    return weights @ v, weights


def naive_elementwise(q, k, v, is_causal):
    """A_ij = exp(s_j) / sum_{visible l} exp(s_l), s_t = SiLU(q_t) . k_t / sqrt(d)."""
    d, n = q.shape[-1], q.shape[-2]
    s = (q * torch.sigmoid(q) * k).sum(-1) / math.sqrt(d)
    weights = torch.zeros(*s.shape, n, dtype=q.dtype)
    for i in range(n):
        visible = s[..., : i + 1] if is_causal else s
        weights[..., i, : visible.shape[-1]] = torch.softmax(visible, dim=-1)
    return weights @ v, weights


def naive_scores(q, k, delta, bias, base=10000.0, eps=1e-9):
    """score_mn = sum_i r_q,m,i r_k,n,i cos(delta_i (theta_q,m,i - theta_k,n,i) + b_i + (m - n) g_i), materialising
    the (B, H, N, N, d/2) tensor of angles."""
    n, d = q.shape[-2], q.shape[-1]
    half = d // 2
    r_q = torch.sqrt(q[..., :half] ** 2 + q[..., half:] ** 2 + eps)
    r_k = torch.sqrt(k[..., :half] ** 2 + k[..., half:] ** 2 + eps)
    t_q, t_k = torch.atan2(q[..., half:], q[..., :half]), torch.atan2(k[..., half:], k[..., :half])
    g = torch.tensor([base ** (-2.0 * i / d) for i in range(half)], dtype=q.dtype)
    rel = (torch.arange(n, dtype=q.dtype)[:, None] - torch.arange(n, dtype=q.dtype)[None, :])[..., None] * g
    angle = delta[None, :, None, None, :] * (t_q[:, :, :, None, :] - t_k[:, :, None, :, :]) \
        + bias[None, :, None, None, :] + rel
    return (r_q[:, :, :, None, :] * r_k[:, :, None, :, :] * torch.cos(angle)).sum(-1)
