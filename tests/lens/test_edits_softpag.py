"""SoftPAG (arXiv 2506.10978): u = 1 gives the identity map on the chosen heads, u = 0 nothing; the uniform and
temperature targets match their closed forms; the Fisher-Rao path is a geodesic; only chosen heads / batch move."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.lens import STATE, AttentionCall, lens_attention
from visattn.lens.edits import SoftPerturbedAttention, fisher_rao_path, perturbation_guidance


def run(call: AttentionCall, *edits) -> torch.Tensor:
    STATE.edits[:] = list(edits)
    try:
        return lens_attention(call)[1]
    finally:
        STATE.edits.clear()


def make_call(seed: int, n: int = 9, layer: int = 0, causal: bool = False) -> AttentionCall:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 4, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    bias = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1) if causal else None
    return AttentionCall(layer=layer, name="m", q=q, k=k, v=v, scale=0.4, bias=bias)


def fisher_rao_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 2 * torch.arccos((a * b).sqrt().sum(-1).clamp(-1, 1))


def test_u_one_gives_the_identity_map_on_the_chosen_heads_only():
    call = make_call(0)
    base = run(call)
    for path in ("linear", "fisher_rao"):
        probs = run(call, SoftPerturbedAttention(1.0, path=path, heads=[1, 3]))
        eye = torch.eye(9, dtype=torch.float64).expand(2, 2, 9, 9)
        torch.testing.assert_close(probs[:, [1, 3]], eye, atol=1e-12, rtol=0)
        assert torch.equal(probs[:, [0, 2]], base[:, [0, 2]])
    decode = AttentionCall(**{**call.__dict__, "q": call.q[:, :, -2:]})
    last_two = run(decode, SoftPerturbedAttention(1.0))
    assert torch.equal(last_two[0, 0].argmax(-1), torch.tensor([7, 8]))


def test_u_zero_and_other_layers_leave_attention_unchanged():
    call = make_call(1)
    base = run(call)
    for target, temperature in (("identity", None), ("uniform", None), ("temperature", 2.0)):
        for path in ("linear", "fisher_rao"):
            edit = SoftPerturbedAttention(0.0, target=target, path=path, temperature=temperature)
            assert torch.equal(run(call, edit), base)
    other = AttentionCall(**{**call.__dict__, "layer": 5})
    assert torch.equal(run(other, SoftPerturbedAttention(1.0, layers=[0])), run(other))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), u=st.floats(0.0, 1.0), temperature=st.floats(0.2, 5.0))
def test_targets_match_closed_forms(seed, u, temperature):
    call = make_call(seed, causal=True)
    base = run(call)
    n = 9
    counts = torch.arange(1, n + 1, dtype=torch.float64).view(n, 1)
    uniform = torch.tril(torch.ones(n, n, dtype=torch.float64)) / counts
    torch.testing.assert_close(run(call, SoftPerturbedAttention(u, target="uniform")), (1 - u) * base + u * uniform,
                               atol=1e-12, rtol=1e-10)
    logits = call.q @ call.k.transpose(-2, -1) * call.scale + call.bias
    cooled = torch.softmax(logits / temperature, -1)
    torch.testing.assert_close(run(call, SoftPerturbedAttention(u, target="temperature", temperature=temperature)),
                               (1 - u) * base + u * cooled, atol=1e-12, rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), u=st.floats(0.0, 1.0))
def test_fisher_rao_path_is_the_geodesic(seed, u):
    g = torch.Generator().manual_seed(seed)
    a = torch.softmax(torch.randn(5, 7, generator=g, dtype=torch.float64), -1)
    b = torch.softmax(2 * torch.randn(5, 7, generator=g, dtype=torch.float64), -1)
    mid = fisher_rao_path(a, b, u)
    torch.testing.assert_close(mid.sum(-1), torch.ones(5, dtype=torch.float64), atol=1e-12, rtol=0)
    total = fisher_rao_distance(a, b)
    torch.testing.assert_close(fisher_rao_distance(a, mid), u * total, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fisher_rao_distance(mid, b), (1 - u) * total, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fisher_rao_path(a, a, u), a, atol=1e-12, rtol=0)


def test_head_pairs_and_batch_select_what_moves():
    calls = [make_call(2, layer=0), make_call(3, layer=1)]
    edit = SoftPerturbedAttention(1.0, head_pairs=[(0, 2), (1, 0)], batch=[1])
    for call, head in zip(calls, (2, 0), strict=True):
        base, probs = run(call), run(call, edit)
        changed = (probs != base).any(-1).any(-1)
        expected = torch.zeros(2, 4, dtype=torch.bool)
        expected[1, head] = True
        assert torch.equal(changed, expected)


def test_guidance_combination():
    orig, pert = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(perturbation_guidance(orig, pert, 3.0), orig + 3.0 * (orig - pert))
    assert torch.equal(perturbation_guidance(orig, pert, 0.0), orig)


def test_bad_input_is_named():
    call = make_call(4)
    with pytest.raises(ValueError, match=r"heads \[4\] out of range"):
        run(call, SoftPerturbedAttention(heads=[4]))
    with pytest.raises(ValueError, match=r"head_pairs \[\(0, 6\)\] out of range; the model has 4 heads"):
        SoftPerturbedAttention(head_pairs=[(0, 6)]).check(num_layers=2, num_heads=4)
    with pytest.raises(ValueError, match=r"layers \[3\] out of range"):
        SoftPerturbedAttention(head_pairs=[(3, 0)]).check(num_layers=2, num_heads=4)
    with pytest.raises(ValueError, match=r"batch entries \[2\] out of range"):
        run(call, SoftPerturbedAttention(batch=[2]))
    with pytest.raises(ValueError, match="temperature is needed by"):
        SoftPerturbedAttention(target="temperature")
    with pytest.raises(ValueError, match=r"u must be in \[0.0, 1.0\]"):
        SoftPerturbedAttention(1.5)
    with pytest.raises(ValueError, match="same shape"):
        perturbation_guidance(torch.zeros(2), torch.zeros(3), 1.0)


@pytest.mark.parametrize("path", ["linear", "fisher_rao"])
def test_gradients_pass_through_the_edit(path):
    call = make_call(5, n=5)
    q = call.q[:1, :2].clone().requires_grad_(True)
    k, v = call.k[:1, :2], call.v[:1, :2]
    edit = SoftPerturbedAttention(0.4, target="uniform", path=path, heads=[1])

    def attend(q):
        return run_output(AttentionCall(layer=0, name="m", q=q, k=k, v=v, scale=0.4), edit)

    assert torch.autograd.gradcheck(attend, (q,))


def run_output(call: AttentionCall, *edits) -> torch.Tensor:
    STATE.edits[:] = list(edits)
    try:
        return lens_attention(call)[0]
    finally:
        STATE.edits.clear()
