"""ConsistEdit (arXiv 2510.17803): source Q/K on the target's vision tokens during the first alpha T steps, masked
fusion afterwards, V fused at every step, text and source untouched; the mask follows the edited word."""

from __future__ import annotations

import pytest
import torch

from visattn.lens import STATE, AttentionCall, lens_attention
from visattn.lens.edits import ConsistEditControl, edit_region_mask

TEXT = [6, 7, 8]
IMAGE = [0, 1, 2, 3, 4, 5]


def used_qkv(call: AttentionCall, edit: ConsistEditControl) -> tuple[torch.Tensor, ...]:
    seen = []
    STATE.recorders[:] = [lambda c, t: seen.append((c.q, c.k, c.v))]
    STATE.edits[:] = [edit]
    try:
        lens_attention(call)
    finally:
        STATE.edits.clear()
        STATE.recorders.clear()
    return seen[0]


def make_call(seed: int, batch: int = 4) -> AttentionCall:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, 2, 9, 4, generator=g, dtype=torch.float64) for _ in range(3))
    return AttentionCall(layer=0, name="joint", q=q, k=k, v=v, scale=0.5)


def test_fusion_by_step_with_a_fixed_mask():
    call = make_call(0)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    edit = ConsistEditControl(TEXT, num_steps=10, consistency=0.3, mask=mask, pairs=[(0, 2), (1, 3)])
    for step, qk_from_source_everywhere in ((0, True), (2, True), (3, False), (9, False)):
        edit.set_step(step)
        q, k, v = used_qkv(call, edit)
        for src, tgt in ((0, 2), (1, 3)):
            for name, new, old in (("q", q, call.q), ("k", k, call.k), ("v", v, call.v)):
                assert torch.equal(new[src], old[src]), name
                assert torch.equal(new[tgt][:, TEXT], old[tgt][:, TEXT]), name
                m = mask if (name == "v" or not qk_from_source_everywhere) else torch.zeros(6, dtype=torch.float64)
                expected = m[:, None] * old[tgt][:, IMAGE] + (1 - m[:, None]) * old[src][:, IMAGE]
                torch.testing.assert_close(new[tgt][:, IMAGE], expected, atol=0, rtol=0)


def test_per_call_mask_comes_from_the_source_attention():
    call = make_call(1, batch=2)
    k = call.k.clone()
    k[0, :, 7] = 0.0
    k[0, :, 7, 0] = 6.0
    q = call.q.clone()
    q[0, :, [1, 4], 0] = 3.0
    q[0, :, [0, 2, 3, 5], 0] = -3.0
    call = AttentionCall(**{**call.__dict__, "q": q, "k": k})
    probs = torch.softmax(q[:1] @ k[:1].transpose(-2, -1) * call.scale, -1)
    region = edit_region_mask(probs, IMAGE, TEXT, [1])
    assert region.tolist() == [[False, True, False, False, True, False]]
    edit = ConsistEditControl(TEXT, num_steps=4, consistency=0.0, edit_tokens=[1])
    _, _, v = used_qkv(call, edit)
    keep = region[0].to(torch.float64)[:, None]
    torch.testing.assert_close(v[1][:, IMAGE], keep * call.v[1][:, IMAGE] + (1 - keep) * call.v[0][:, IMAGE])


def test_neutral_mask_and_no_consistency_leave_attention_unchanged():
    call = make_call(2)
    edit = ConsistEditControl(TEXT, num_steps=5, consistency=0.0, mask=torch.ones(6, dtype=torch.bool))
    q, k, v = used_qkv(call, edit)
    assert torch.equal(q, call.q) and torch.equal(k, call.k) and torch.equal(v, call.v)


def test_heads_restrict_the_fusion():
    call = make_call(3)
    edit = ConsistEditControl(TEXT, num_steps=5, mask=torch.zeros(6), heads=[1])
    q, _, _ = used_qkv(call, edit)
    assert torch.equal(q[:, 0], call.q[:, 0])
    assert torch.equal(q[2:, 1][:, IMAGE], call.q[:2, 1][:, IMAGE])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="batch of source and target halves, got batch size 3"):
        used_qkv(make_call(4, batch=3), ConsistEditControl(TEXT, num_steps=2, mask=torch.ones(6)))
    with pytest.raises(ValueError, match="mask covers 5 vision tokens, layer 0 has 6"):
        used_qkv(make_call(4), ConsistEditControl(TEXT, num_steps=2, mask=torch.ones(5)))
    with pytest.raises(ValueError, match="exactly one of mask"):
        ConsistEditControl(TEXT, num_steps=2)
    with pytest.raises(ValueError, match=r"text_tokens \[12\] out of range for 9 keys"):
        used_qkv(make_call(4), ConsistEditControl([12], num_steps=2, mask=torch.ones(8)))
    with pytest.raises(ValueError, match=r"pairs \[\(0, 5\)\] out of range for batch size 4"):
        used_qkv(make_call(4), ConsistEditControl(TEXT, num_steps=2, mask=torch.ones(6), pairs=[(0, 5)]))


def test_switch_step_is_int_alpha_t_as_the_official_code():
    """alpha 0.3, T 28: the official code (TEST_QK_STEP = int(28 * 0.3) = 8) fuses from step 8 on; 8 < 8.4 did not."""
    call = make_call(5)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    edit = ConsistEditControl(TEXT, num_steps=28, consistency=0.3, mask=mask)
    assert edit.switch_step == 8
    for step, source_qk in ((7, True), (8, False)):
        edit.set_step(step)
        q, _, _ = used_qkv(call, edit)
        expected = call.q[:2][:, :, IMAGE] if source_qk else (
            mask[:, None] * call.q[2:][:, :, IMAGE] + (1 - mask[:, None]) * call.q[:2][:, :, IMAGE])
        torch.testing.assert_close(q[2:][:, :, IMAGE], expected, atol=0, rtol=0)
