"""visattn_raptor_*: the time-gated block against a written-out float64 formula, the recurrence against a loop over
the shared blocks, timm's contract, parameter sharing, the teacher's parts copied, the lens, bad input refused."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from contract import (
    check_lens_cli,
    check_meta_build_matches,
    check_timm_contract,
    count_params_meta,
    digits_loss_falls,
)
from timm.models.vision_transformer import VisionTransformer

from visattn import lens
from visattn.models.raptor import (
    PAPER_PHASES,
    Raptor,
    RaptorBlock,
    check_phases,
    phases_from_sizes,
    raptor_from_teacher,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(img_size=32, patch_size=8, embed_dim=24, num_heads=2, num_classes=7)
"""16 patches + a class token, 24 channels."""


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter drawn afresh (LayerScale and the time gates far from their near-identity init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.5)


def _layer_norm(x, norm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _oracle_block(block: RaptorBlock, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The paper's block written out: gates (1 + W2 silu(W1 t + b1) + b2), attention with an explicit softmax, SwiGLU,
    LayerScale."""
    b, n, d = x.shape
    heads = block.attn.num_heads
    g = t.reshape(-1, 1) * block.gates.fc1.weight.reshape(1, -1) + block.gates.fc1.bias
    g = (g * torch.sigmoid(g)) @ block.gates.fc2.weight.T + block.gates.fc2.bias + 1
    g1, g2, g3 = (g[:, None, i * d:(i + 1) * d] for i in range(3))
    h = _layer_norm(x, block.norm1)
    qkv = h @ block.attn.qkv.weight.T + block.attn.qkv.bias
    q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(b, n, heads, d // heads).transpose(1, 2) for i in range(3))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    mixed = (weights / weights.sum(-1, keepdim=True)) @ v
    attn = mixed.transpose(1, 2).reshape(b, n, d) @ block.attn.proj.weight.T + block.attn.proj.bias
    x = x + g1 * block.ls1.gamma * attn
    h = _layer_norm(x, block.norm2)
    gate = h @ block.mlp.fc1_g.weight.T + block.mlp.fc1_g.bias
    value = h @ block.mlp.fc1_x.weight.T + block.mlp.fc1_x.bias
    mlp = (gate * torch.sigmoid(gate) * value) @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    x = x + g2 * block.ls2.gamma * mlp
    return g3 * x


@pytest.mark.parametrize(("batch", "tokens", "dim", "heads"), [(2, 7, 12, 3), (1, 5, 10, 1), (3, 9, 16, 4)])
def test_block_matches_the_written_out_formula_float64(batch, tokens, dim, heads):
    block = RaptorBlock(dim, heads, mlp_ratio=1.5).double().eval()
    _randomise(block)
    x = torch.randn(batch, tokens, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.arange(1, batch + 1, dtype=torch.float64) * 3
    torch.testing.assert_close(block(x, t), _oracle_block(block, x, t), atol=1e-12, rtol=1e-10)
    with torch.no_grad():
        assert block(x, t).dtype == torch.float64


def test_block_float32_within_stated_tolerance():
    """float32 against the float64 oracle: 1e-5 absolute and relative."""
    block = RaptorBlock(12, 3).eval()
    _randomise(block, seed=3)
    x = torch.randn(2, 7, 12, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([2.0, 5.0])
    reference = _oracle_block(block.double(), x.double(), t.double())
    torch.testing.assert_close(block.float()(x, t).double(), reference, atol=1e-5, rtol=1e-5)


def test_block_gradients():
    block = RaptorBlock(6, 2, mlp_ratio=1.0, time_hidden=3).double()
    _randomise(block, seed=4)
    x = torch.randn(1, 3, 6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([4.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, t: block(x, t), (x, t))


def test_block_starts_near_identity_and_without_gates():
    """LayerScale 1e-5 and the gates' output layer at N(0, 1e-4): for the times of a 12-layer ViT the gates are
    within 1e-2 of 1 and a fresh block moves its input by less than 1e-2 of its largest entry."""
    block = RaptorBlock(16, 2)
    assert torch.all(block.ls1.gamma == 1e-5) and torch.all(block.ls2.gamma == 1e-5)
    assert block.gates.fc2.weight.std() < 3e-4
    with torch.no_grad():
        gates = torch.cat(block.gates(torch.arange(1.0, 13.0)), dim=-1)
        assert gates.shape == (12, 1, 48) and (gates - 1).abs().max() < 1e-2
        x = torch.randn(2, 5, 16)
        assert (block(x, torch.tensor([1.0, 12.0])) - x).abs().max() < 1e-2 * x.abs().max()
    plain = RaptorBlock(16, 2, time_gates=False, mlp="gelu")
    _randomise(plain)
    h = x + plain.ls1(plain.attn(plain.norm1(x)))
    torch.testing.assert_close(plain(x, torch.tensor([3.0, 3.0])), h + plain.ls2(plain.mlp(plain.norm2(h))))


def test_the_recurrence_is_a_loop_over_the_shared_blocks():
    """forward_features = embed, then for l = 1..L the block of the phase holding layer l-1 at time t = l, then the
    final norm; a non-contiguous phase runs the same block at each of its layers."""
    phases = [[0, 1, 4], [2, 3]]
    model = Raptor(phases, **TINY).eval()
    for block in model.recurrent_blocks:
        _randomise(block, seed=5)
    assert all(step.block is model.recurrent_blocks[p] for step, p in zip(model.blocks, [0, 0, 1, 1, 0], strict=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for layer in range(5):
            phase = 0 if layer in phases[0] else 1
            h = model.recurrent_blocks[phase](h, torch.full((2,), float(layer + 1)))
        torch.testing.assert_close(model.forward_features(x), model.norm(h))


def test_timm_contract():
    model = check_timm_contract("visattn_raptor_small_patch16_224", 32, patch_size=8, embed_dim=24, num_heads=2,
                                phases=[[0, 1], [2]])
    assert model.depth == 3 and model.num_phases == 2


def test_timm_contract_with_registers():
    check_timm_contract("visattn_raptor2_base_patch14_reg4_dinov2", 28, patch_size=7, embed_dim=16, num_heads=2,
                        num_classes=10, phases=phases_from_sizes((1, 2)))


def test_meta_build_matches():
    kwargs = dict(img_size=32, patch_size=8, embed_dim=24, num_heads=2, phases=[[0], [1, 2]])
    torch.manual_seed(0)
    model = timm.create_model("visattn_raptor_small_patch16_224", **kwargs)
    check_meta_build_matches("visattn_raptor_small_patch16_224", model, torch.randn(2, 3, 32, 32), **kwargs)


def test_registered_phases_and_parameter_sharing():
    """The paper's DINOv2-B segmentations; the parameters are the embedding, norm and head of the ViT plus one
    block per phase: a block of width D holds 2 LayerNorms (4D), qkv and proj (4D^2 + 4D), SwiGLU with 4D hidden units
    (12D^2 + 9D), two LayerScales (2D) and the gates (16 + 16 + 16 * 3D + 3D)."""
    assert PAPER_PHASES[2] == (tuple(range(7)), tuple(range(7, 12)))
    assert PAPER_PHASES[4] == ((0, 1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11))
    d = 768
    block = 4 * d + 4 * d * d + 4 * d + 12 * d * d + 9 * d + 2 * d + 32 + 48 * d + 3 * d
    embed = 3 * 14 * 14 * d + d + d + 4 * d + 37 * 37 * d + 2 * d  # patch proj, cls, 4 reg, pos (518 / 14), norm
    for k in (2, 3, 4):
        name = f"visattn_raptor{k}_base_patch14_reg4_dinov2"
        with torch.device("meta"):
            model = timm.create_model(name)
        assert model.phases == PAPER_PHASES[k] and len(model.blocks) == 12
        assert count_params_meta(name) == embed + k * block
    vit_b = count_params_meta("visattn_vit_base_patch16_224")
    vit_block = 12 * d * d + 13 * d
    assert count_params_meta("visattn_raptor_base_patch16_224") == vit_b - 12 * vit_block + 3 * block


def test_no_released_weights():
    with pytest.raises(NotImplementedError, match="no Raptor weights"):
        timm.create_model("visattn_raptor_small_patch16_224", pretrained=True)


def test_from_teacher_copies_the_embedding_and_head():
    teacher = VisionTransformer(**dict(TINY, depth=4), reg_tokens=2, global_pool="avg").eval()
    surrogate = raptor_from_teacher(teacher, [[0, 1], [2, 3]], mlp_ratio=2.0).eval()
    ours, theirs = surrogate.state_dict(), teacher.state_dict()
    shared = [k for k in ours if not k.startswith("recurrent_blocks.")]
    assert {"cls_token", "reg_token", "pos_embed", "patch_embed.proj.weight", "fc_norm.weight", "head.weight"} <= set(
        shared)
    for key in shared:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        embedded = teacher.norm_pre(teacher._pos_embed(teacher.patch_embed(x)))
        torch.testing.assert_close(surrogate.norm_pre(surrogate._pos_embed(surrogate.patch_embed(x))), embedded)
        torch.testing.assert_close(surrogate.forward_head(surrogate.norm(embedded)),
                                   teacher.forward_head(teacher.norm(embedded)))
    assert surrogate.num_prefix_tokens == 3 and surrogate.depth == 4
    with pytest.raises(TypeError, match="teacher must be a timm VisionTransformer"):
        raptor_from_teacher(torch.nn.Linear(2, 2), [[0]])
    with pytest.raises(ValueError, match="phases must cover layers 0..3"):
        raptor_from_teacher(teacher, [[0, 1], [2]])


def test_the_lens_sees_one_attention_layer_per_applied_step():
    """The lens unrolls the recurrence (visattn.lens.adapters.recurrent; tested in tests/lens)."""
    model = Raptor([[0, 1, 2], [3]], **TINY).eval()
    layers = lens.attention_layers(model)
    assert [info.name for info in layers] == ["recurrent_blocks.0.attn@t1", "recurrent_blocks.0.attn@t2",
                                              "recurrent_blocks.0.attn@t3", "recurrent_blocks.1.attn@t4"]
    x = torch.randn(1, 3, 32, 32)
    with lens.capture(model, what=("probs",)) as rec, torch.no_grad():
        captured = model(x)
    assert [len(rec.calls(i)) for i in range(4)] == [1, 1, 1, 1]
    assert rec.get("probs", 0).shape == {"batch": 1, "head": 2, "query": 17, "key": 17}
    with torch.no_grad():
        torch.testing.assert_close(captured, model(x), atol=1e-5, rtol=0)


def test_digits_loss_falls():
    """From scratch (a fitted Raptor starts from its teacher): average pooling, since the blocks start as the identity
    and the class token would reach the head unchanged by the image."""
    model = timm.create_model("visattn_raptor_small_patch16_224", img_size=32, patch_size=8, embed_dim=32,
                              num_heads=2, num_classes=10, phases=[[0, 1], [2, 3]], global_pool="avg")
    digits_loss_falls(model, 32, steps=15, lr=3e-3)


@pytest.mark.parametrize(("phases", "error", "match"), [
    ([[0, 1], [3]], ValueError, r"missing \[2\]"),
    ([[0, 1], [1, 2]], ValueError, r"repeated \[1\]"),
    ([[0], []], ValueError, "non-empty"),
    ([], TypeError, "non-empty sequence"),
    ("01", TypeError, "non-empty sequence"),
    ([[0, 1.0]], TypeError, "int layer indices"),
])
def test_bad_phases_are_refused(phases, error, match):
    with pytest.raises(error, match=match):
        check_phases(phases)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="out of range"):
        check_phases([[0, 1], [2, 5]], depth=4)
    with pytest.raises(ValueError, match="depth=4 disagrees with phases"):
        Raptor([[0, 1], [2]], depth=4, **TINY)
    with pytest.raises(ValueError, match="drop_path_rate"):
        Raptor([[0]], drop_path_rate=0.1, **TINY)
    with pytest.raises(ValueError, match="mlp must be"):
        RaptorBlock(8, 2, mlp="relu")
    with pytest.raises(ValueError, match="init_values must be"):
        RaptorBlock(8, 2, init_values=0)
    with pytest.raises(ValueError, match="sizes must be positive"):
        phases_from_sizes((3, 0))


def test_lens_cli(tmp_path):
    """`visattn lens` reads a Raptor: one row per applied step."""
    data = check_lens_cli("visattn_raptor_small_patch16_224", tmp_path,
                          "img_size=32,patch_size=8,embed_dim=24,num_heads=2,phases=[[0,1,2],[3]]", min_layers=4)
    assert {layer for values in data["per_layer"].values() for layer in values} == {"0", "1", "2", "3"}
