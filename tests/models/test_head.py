"""visattn.models._head: the channels-last classifier head of NAT, DiNAT and DependencyViT."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from visattn.models._head import ChannelsLastHead, check_global_pool


class _Net(ChannelsLastHead):
    def __init__(self, num_classes: int, global_pool: str, drop: float = 0.0) -> None:
        super().__init__()
        self.num_features, self.num_classes = 6, num_classes
        self.global_pool = check_global_pool(global_pool)
        self.norm = nn.LayerNorm(6, dtype=torch.float64)
        self.head_drop = nn.Dropout(drop)
        self.head = nn.Linear(6, num_classes, dtype=torch.float64)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.norm(x)


@pytest.mark.parametrize("shape", [(2, 5, 6), (3, 3, 5, 6)])
def test_avg_pool_is_the_mean_over_all_positions_then_the_linear_head(shape: tuple[int, ...]) -> None:
    net = _Net(4, "avg").eval()
    x = torch.randn(shape, dtype=torch.float64)
    features = net.norm(x)
    pooled = features.reshape(shape[0], -1, 6).mean(dim=1)
    torch.testing.assert_close(net.forward_head(features, pre_logits=True), pooled)
    torch.testing.assert_close(net(x), pooled @ net.head.weight.T + net.head.bias)


def test_no_pool_keeps_the_positions_and_dropout_acts_in_training() -> None:
    net = _Net(4, "", drop=0.5)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    net.eval()
    assert net(x).shape == (2, 5, 4)
    net.train()
    assert (net.forward_head(x, pre_logits=True) == 0).any()


def test_reset_classifier_replaces_the_head_on_the_norms_device() -> None:
    net = _Net(4, "avg").to("meta")
    net.reset_classifier(7, "")
    assert net.get_classifier().out_features == 7 and net.get_classifier().weight.device.type == "meta"
    assert net.global_pool == "" and net.num_classes == 7
    net.reset_classifier(0)
    assert isinstance(net.head, nn.Identity) and net.global_pool == ""
    with pytest.raises(ValueError, match="global_pool must be 'avg' or '', got 'max'"):
        net.reset_classifier(3, "max")
    with pytest.raises(ValueError, match="global_pool"):
        check_global_pool("token")
