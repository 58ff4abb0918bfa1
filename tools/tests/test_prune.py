"""Structured pruning: smaller, still runnable, and exact when the removed channels are dead."""
import pytest
import torch
from torch import nn

from reidtrain import models, prune
from reidtrain.models.osnet import OSBlock
from reidtrain.models.sclnet import SCUnit


@pytest.mark.parametrize("arch", models.WIDTH_ARCHS)
def test_pruning_keeps_the_network_runnable_and_smaller(arch):
    net = models.build(arch, 0.5, num_classes=10)
    params, macs = models.count_params(net), models.count_flops(net, 128, 64)
    prune.prune(net, 0.5)
    assert models.count_params(net) < 0.85 * params
    assert models.count_flops(net, 128, 64) < 0.75 * macs
    net.train()
    out = net(torch.randn(4, 3, 128, 64))
    out.logits[0].sum().backward()  # still trainable
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 128, 64)).shape == (2, net.embed_dim)


def _kill_low_channels(net: nn.Module, ratio: float) -> None:
    """Zero γ and β of the channels pruning will remove (indices ≥ the kept count) in every
    BN that ranks a pruning group, and give the others γ ≥ 0.5, so the pruned net must compute
    exactly what the unpruned one does."""
    def kill(bn: nn.BatchNorm2d):
        keep = prune._keep_count(bn.num_features, ratio)
        bn.weight.data = torch.rand(bn.num_features) + 0.5
        bn.weight.data[keep:] = 0
        bn.bias.data[keep:] = 0

    for m in net.modules():
        if isinstance(m, OSBlock):
            kill(m.reduce[1])
            for stream in m.streams:
                for lite in stream:
                    kill(lite[2])
        elif isinstance(m, SCUnit):
            for part in (m.a1, m.a2, m.b1, m.b2):
                kill(part[1])


@pytest.mark.parametrize("arch", models.WIDTH_ARCHS)
def test_pruning_dead_channels_changes_nothing(arch):
    torch.manual_seed(0)
    net = models.build(arch, 0.25, num_classes=10).eval()
    _kill_low_channels(net, 0.5)
    x = torch.randn(3, 3, 128, 64)
    with torch.no_grad():
        before = net(x)
        prune.prune(net, 0.5)
        after = net(x)
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-4)


def test_ratio_out_of_range_is_refused():
    with pytest.raises(ValueError, match="ratio"):
        prune.prune(models.build("osnet", 0.25, 5), 1.0)
