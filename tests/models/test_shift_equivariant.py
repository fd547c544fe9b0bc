"""visattn_polyvit_* / visattn_polyswin_* (arXiv 2306.07470): logits exactly invariant to circular shifts in float64
while timm's plain ViT and Swin change, patch tokens moved by whole tokens, the consistency metric against a naive
loop, timm's contract, parameter counts against timm's plain models and the published sizes, digits training, plain
timm checkpoints loading, gradients, bad input refused."""

from __future__ import annotations

import pytest
import timm
import torch
from contract import check_lens_cli, check_timm_contract, count_params_meta, digits, digits_loss_falls
from torch import nn

from visattn.models.published import PUBLISHED
from visattn.models.shift_equivariant import (
    PLAIN_COUNTERPARTS,
    VIT_ARGS,
    AnchoredPatchMerging,
    AnchoredSwinBlock,
    circular_shift,
    shift_consistency,
    vit_checkpoint_filter_fn,
)
from visattn.transforms.polyphase import polyphase_index

pytestmark = pytest.mark.usefixtures("one_thread")

VIT = "visattn_polyvit_tiny_patch16_224"
SWIN = "visattn_polyswin_tiny_patch4_window7_224"
VIT_TINY = dict(img_size=32, patch_size=4, depth=2, embed_dim=24, num_heads=2)
"""8 x 8 patch tokens of 4 x 4 pixels."""
SWIN_TINY = dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2, 1), num_heads=(1, 2, 4))
"""16 x 16 tokens in 4 x 4 windows (shifted by 2 in every second block), merged to 8 x 8 and 4 x 4."""
CASES = [(VIT, VIT_TINY), (SWIN, SWIN_TINY)]
SHIFTS = torch.tensor([[0, 0], [1, 0], [0, 3], [5, 11], [17, 30], [31, 31]])


def _model(name: str, kwargs: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=7, **kwargs).double().eval()


def _images(count: int = 2, side: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, side, side, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _shifted_logits(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(circular_shift(x, shift.expand(x.shape[0], 2))) for shift in SHIFTS]


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=["vit", "swin"])
def test_circular_shifts_leave_the_logits_unchanged(name, kwargs):
    logits = _shifted_logits(_model(name, kwargs), _images())
    assert logits[0].abs().max() > 1e-3
    for shifted in logits[1:]:
        torch.testing.assert_close(shifted, logits[0], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=["vit", "swin"])
def test_the_plain_timm_model_changes_under_the_same_shifts(name, kwargs):
    logits = _shifted_logits(_model(PLAIN_COUNTERPARTS[name], kwargs), _images())
    assert all((shifted - logits[0]).abs().max() > 1e-4 for shifted in logits[1:])


def test_vit_patch_tokens_move_by_whole_tokens():
    """The anchored token grid of a shifted image is a circular roll of the original grid (the PEG and attention
    commute with it), so the final patch tokens are the same set, rolled."""
    model, x = _model(VIT, VIT_TINY), _images(1)
    with torch.no_grad():
        tokens = model.forward_features(x)[0, 1:].reshape(8, 8, -1)
        shifted = model.forward_features(circular_shift(x, torch.tensor([[6, 13]])))[0, 1:].reshape(8, 8, -1)
    matches = [(a, b) for a in range(8) for b in range(8)
               if torch.allclose(shifted, tokens.roll((a, b), dims=(0, 1)), atol=1e-12)]
    assert len(matches) == 1, matches


def test_swin_blocks_and_merging_are_the_anchored_classes():
    model = _model(SWIN, SWIN_TINY)
    blocks = [m for m in model.modules() if isinstance(m, AnchoredSwinBlock)]
    assert len(blocks) == sum(SWIN_TINY["depths"]) and all(b.attn_mask is None for b in blocks)
    assert any(any(b.shift_size) for b in blocks), "the tiny config must exercise shifted windows"
    assert sum(isinstance(m, AnchoredPatchMerging) for m in model.modules()) == len(SWIN_TINY["depths"]) - 1


def _naive_consistency(model: nn.Module, x: torch.Tensor, trials: int, max_shift: int | None, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    limit = torch.tensor([x.shape[2] - 1, x.shape[3] - 1]) if max_shift is None else torch.tensor([max_shift] * 2)
    agree = total = 0
    for _ in range(trials):
        draws = (torch.rand(2, x.shape[0], 2, generator=generator) * (limit + 1)).floor().long()
        for b in range(x.shape[0]):
            first = model(torch.roll(x[b : b + 1], tuple(draws[0, b].tolist()), dims=(2, 3))).argmax()
            second = model(torch.roll(x[b : b + 1], tuple(draws[1, b].tolist()), dims=(2, 3))).argmax()
            agree += int(first == second)
            total += 1
    return agree / total


class _CornerReader(nn.Module):
    """Logits = the first 5 pixels of the top row: as shift-sensitive as a classifier can be."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :5]


@pytest.mark.parametrize("max_shift", [None, 3])
def test_shift_consistency_matches_a_naive_loop(max_shift):
    x, model = _images(16, 16).float(), _CornerReader()
    measured = shift_consistency(model, x, trials=3, max_shift=max_shift, generator=torch.Generator().manual_seed(4))
    expected = _naive_consistency(model, x, 3, max_shift, 4)
    assert measured.dim() == 0 and float(measured) == pytest.approx(expected)
    assert expected < 0.8


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=["vit", "swin"])
def test_equivariant_models_are_fully_consistent(name, kwargs):
    model = _model(name, kwargs).float().train()
    assert float(shift_consistency(model, _images(8).float(), trials=2)) == 1.0
    assert model.training


def test_float32_digit_images_are_anchored_consistently():
    """Upscaled digits have near-tied polyphase components: with float32 norms about a quarter of them were anchored
    differently once shifted (the norms are now accumulated in float64), so the model was not invariant."""
    x = digits(32, count=32)[0]
    shifts = (torch.rand(len(x), 2, generator=torch.Generator().manual_seed(0)) * 32).long()
    expected = (polyphase_index(x, 4) + shifts) % 4
    assert torch.equal(polyphase_index(circular_shift(x, shifts), 4), expected)
    model = timm.create_model(VIT, img_size=32, num_classes=10, patch_size=4, depth=2, embed_dim=24, num_heads=2)
    assert float(shift_consistency(model, x, generator=torch.Generator().manual_seed(1))) == 1.0


@pytest.mark.parametrize(("name", "kwargs", "fmt"), [(VIT, VIT_TINY, {}), (SWIN, SWIN_TINY, dict(
    feature_fmt="NHWC", intermediates_fmt="NCHW"))], ids=["vit", "swin"])
def test_timm_contract(name, kwargs, fmt):
    kwargs = dict(kwargs)
    check_timm_contract(name, kwargs.pop("img_size"), **fmt, **kwargs)


@pytest.mark.parametrize("name", sorted(PLAIN_COUNTERPARTS))
def test_parameter_counts_against_timm_and_the_published_sizes(name):
    """Anchoring has no parameters: Swin counts as timm's Swin; the ViTs lose the position embedding (197 x D) and
    gain the PEG's depthwise 3 x 3 convolution (10 D)."""
    ours, plain = count_params_meta(name), count_params_meta(PLAIN_COUNTERPARTS[name])
    dim = VIT_ARGS[name]["embed_dim"] if name in VIT_ARGS else 0
    assert ours == plain - 197 * dim + 10 * dim
    published = PUBLISHED[name]
    assert abs(ours / 1e6 - published.params_m) <= 0.15 * published.params_m, (ours, published)


@pytest.mark.parametrize(("name", "kwargs", "lr"), [
    (VIT, dict(patch_size=8, depth=2, embed_dim=64, num_heads=4), 5e-3),
    (SWIN, dict(patch_size=4, window_size=4, embed_dim=48, depths=(2, 2), num_heads=(2, 4), drop_path_rate=0.0), 2e-3),
], ids=["vit", "swin"])
def test_digits_loss_falls_in_20_steps(name, kwargs, lr):
    torch.manual_seed(0)
    digits_loss_falls(timm.create_model(name, img_size=32, num_classes=10, **kwargs), 32, steps=20, lr=lr)


def test_the_lens_cli_reads_polyvit(tmp_path):
    check_lens_cli(VIT, tmp_path, "img_size=32,patch_size=8,depth=2", min_layers=2)


def test_a_plain_timm_vit_checkpoint_loads_with_a_fresh_peg():
    plain = _model(PLAIN_COUNTERPARTS[VIT], VIT_TINY, seed=1)
    model = _model(VIT, VIT_TINY, seed=2)
    peg = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("pos_conv.")}
    model.load_state_dict(vit_checkpoint_filter_fn(plain.state_dict(), model))
    for key, value in model.state_dict().items():
        expected = peg[key] if key.startswith("pos_conv.") else plain.state_dict()[key]
        assert torch.equal(value, expected), key


def test_a_plain_timm_swin_checkpoint_loads_strictly():
    plain = _model(PLAIN_COUNTERPARTS[SWIN], SWIN_TINY, seed=1)
    model = _model(SWIN, SWIN_TINY, seed=2)
    model.load_state_dict(plain.state_dict())


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    model = timm.create_model(VIT, img_size=8, patch_size=4, depth=1, embed_dim=8, num_heads=2,
                              num_classes=3).double().eval()
    x = _images(1, 8).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: model(t), (x,))


@pytest.mark.parametrize(("name", "kwargs", "side"), [(VIT, VIT_TINY, 30), (SWIN, SWIN_TINY, 31)], ids=["vit", "swin"])
def test_sides_not_divisible_by_the_patch_are_refused(name, kwargs, side):
    model = _model(name, dict(kwargs, img_size=side, strict_img_size=False) if name == SWIN
                   else dict(kwargs, img_size=side, dynamic_img_size=True))
    with pytest.raises(ValueError, match="must divide"):
        model(_images(1, side))


@pytest.mark.parametrize("argument", [dict(embed_layer=nn.Identity), dict(pos_embed="learn")])
def test_fixed_arguments_are_refused(argument):
    with pytest.raises(TypeError, match=next(iter(argument))):
        timm.create_model(VIT, **VIT_TINY, **argument)
    if "embed_layer" in argument:
        with pytest.raises(TypeError, match="embed_layer"):
            timm.create_model(SWIN, **SWIN_TINY, **argument)


def test_shift_consistency_refuses_bad_input():
    model = _CornerReader()
    with pytest.raises(ValueError, match="images"):
        shift_consistency(model, torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="trials"):
        shift_consistency(model, torch.zeros(1, 3, 8, 8), trials=0)
    with pytest.raises(ValueError, match="max_shift"):
        shift_consistency(model, torch.zeros(1, 3, 8, 8), max_shift=-1)
