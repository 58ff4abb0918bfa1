"""Every architecture and width builds, runs and has the parameter count we report."""
import pytest
import torch

from reidtrain import models

# Exact counts without the ID classifier (reported in tools/README.md). The papers: OSNet x1.0
# ≈ 2.2M, SCL-net ≈ 2.3M; torchreid's OSNet x0.25 ≈ 0.2M.
PARAMS = {("osnet", 1.0): 2_170_532, ("osnet", 0.25): 202_888, ("sclnet", 1.0): 2_305_968}


@pytest.mark.parametrize("arch", models.WIDTH_ARCHS)
@pytest.mark.parametrize("width", [1.0, 0.75, 0.5, 0.25])
def test_shapes(arch, width):
    net = models.build(arch, width, num_classes=10)
    x = torch.randn(2, 3, 128, 64)
    net.train()
    out = net(x)
    levels = 2 if arch == "sclnet" else 1
    assert len(out.features) == len(out.logits) == levels
    assert all(l.shape == (2, 10) for l in out.logits)
    net.eval()
    with torch.no_grad():
        emb = net(x)
    assert emb.shape == (2, net.embed_dim)
    assert torch.isfinite(emb).all()


@pytest.mark.parametrize("key,count", PARAMS.items())
def test_parameter_counts(key, count):
    net = models.build(*key, num_classes=743)
    assert models.count_params(net) == count
    # the classifier is training-only and excluded from the count
    assert models.count_params(net, classifier=True) == count + 743 * net.embed_dim


def test_osnet_flops_match_the_paper():
    # OSNet x1.0: 978.9M multiply-adds at 256×128 (Zhou et al., Table 1 / torchreid)
    macs = models.count_flops(models.build("osnet", 1.0, 751))
    assert abs(macs / 1e6 - 978.9) < 1.0


def test_last_stride_one_doubles_the_final_map():
    net = models.build("osnet", 0.25, 5, last_stride=1)
    assert net.backbone(torch.zeros(1, 3, 128, 64)).shape[2:] == (16, 8)
    net = models.build("osnet", 0.25, 5, last_stride=2)
    assert net.backbone(torch.zeros(1, 3, 128, 64)).shape[2:] == (8, 4)


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        models.build("resnet")
    with pytest.raises(ValueError, match="OSNet width"):
        models.build("osnet", 0.3)
