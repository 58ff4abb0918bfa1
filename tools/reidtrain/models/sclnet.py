"""SCL-net: a lightweight ReID backbone built on symmetrical combination units (SC-units).

Cai & Tang ("Lightweight person re-identification model employing symmetrical combination units",
AIPMV 2023) publish only an abstract: an SC-unit "builds feature maps with richer channels by
reusing feature maps from different convolution layers", every base module is redesigned around
it, shallow and deep features are trained jointly, ~2.3M parameters, trained without pretraining.
This is our design from that description (rationale and alternatives: tools/README.md, "SCL-net"):

SC-unit(cin → cout): two mirrored chains, each contributing the maps of *both* its layers:
    chain A (channel, then space):  a1 = PW(x)          a2 = DW(a1)
    chain B (space, then channel):  b1 = PW(DW(x))      b2 = DW(b1)
    out = shuffle(concat(a1, a2, b1, b2))               each part cout/4 channels
PW = 1×1 conv + BN (linear), DW = depthwise 3×3 + BN + ReLU. The output mixes receptive fields
1, 3, 3 and 5 and costs two narrow 1×1s and three depthwise layers; the channel shuffle lets the
next unit's 1×1 see all four parts in every group of channels.

SC-block (the residual bottleneck): SC-unit(cin → mid) → SC-unit(mid → mid) → channel gate →
1×1 conv + BN to cout, plus the shortcut (identity, or 1×1 + BN when the width changes), ReLU.
Stem: 3×3 stride-2 conv, SC-unit, max-pool. Stages 2–4 of 2, 3 and 3 SC-blocks, 2×2 average-pool
transitions. The backbone returns the stage-3 ("shallow") and stage-4 ("deep") maps; the head
pools both and trains each with its own BNNeck and losses; the embedding is their concatenation.
"""
import torch
from torch import nn

from .layers import ChannelGate, ConvBN

# Stage widths at x1.0, chosen so the whole network (backbone + head, without the ID classifier)
# has about 2.3M parameters.
BASE_WIDTHS = (32, 128, 256, 384, 640)
DEPTHS = (2, 3, 3)  # SC-blocks in stages 2, 3, 4


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class SCUnit(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        if cout % 4:
            raise ValueError(f"SC-unit output width must be a multiple of 4, got {cout}")
        q = cout // 4
        # the 1×1 layers are linear (BN, no ReLU): a ReLU on q = cout/4 channels throws away
        # information the depthwise layer after it needs (MobileNetV2's linear bottleneck)
        self.a1 = ConvBN(cin, q, 1, relu=False)
        self.a2 = ConvBN(q, q, 3, groups=q)
        self.b0 = ConvBN(cin, cin, 3, groups=cin)
        self.b1 = ConvBN(cin, q, 1, relu=False)
        self.b2 = ConvBN(q, q, 3, groups=q)

    def forward(self, x):
        a1 = self.a1(x)
        b1 = self.b1(self.b0(x))
        return channel_shuffle(torch.cat([a1, self.a2(a1), b1, self.b2(b1)], 1), 4)


class SCBlock(nn.Module):
    def __init__(self, cin: int, cout: int, reduction: int = 2):
        super().__init__()
        mid = cout // reduction
        self.units = nn.Sequential(SCUnit(cin, mid), SCUnit(mid, mid))
        self.gate = ChannelGate(mid)
        self.expand = ConvBN(mid, cout, 1, relu=False)
        self.shortcut = None if cin == cout else ConvBN(cin, cout, 1, relu=False)

    def forward(self, x):
        out = self.expand(self.gate(self.units(x)))
        skip = x if self.shortcut is None else self.shortcut(x)
        return (out + skip).relu()


def _round8(v: float) -> int:
    return max(8, int(round(v / 8)) * 8)


class SCLNet(nn.Module):
    """Backbone: image → [stage-3 map (shallow), stage-4 map (deep)]."""

    def __init__(self, width: float = 1.0, last_stride: int = 2):
        super().__init__()
        c0, cs, c1, c2, c3 = (_round8(c * width) for c in BASE_WIDTHS)
        c0 = max(c0, 16)  # a stem narrower than 16 starves everything after it (OSNet x0.25: 16)
        self.stem = nn.Sequential(ConvBN(3, c0, 3, stride=2), SCUnit(c0, cs), nn.MaxPool2d(3, 2, 1))
        d2, d3, d4 = DEPTHS

        def stage(cin, cout, n):
            return [SCBlock(cin, cout)] + [SCBlock(cout, cout) for _ in range(n - 1)]

        self.stage2 = nn.Sequential(*stage(cs, c1, d2), nn.AvgPool2d(2, 2))
        self.stage3 = nn.Sequential(*stage(c1, c2, d3))
        pool = nn.AvgPool2d(2, 2) if last_stride == 2 else nn.Identity()
        self.stage4 = nn.Sequential(pool, *stage(c2, c3, d4))
        self.out_channels = (c2, c3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        shallow = self.stage3(self.stage2(self.stem(x)))
        return [shallow, self.stage4(shallow)]
