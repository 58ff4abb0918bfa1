"""OSNet (Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification", ICCV 2019).

Written from the paper's description: residual bottlenecks whose middle is T = 4 streams of 1..4
stacked Lite 3×3 convolutions (receptive fields 3, 5, 7, 9), fused by one unified aggregation gate
shared by the streams. Stage widths 64/256/384/512 at x1.0, scaled by the width multiplier.
"""
import torch
from torch import nn

from .layers import ChannelGate, ConvBN, LiteConv3x3

WIDTHS = {1.0: (64, 256, 384, 512), 0.75: (48, 192, 288, 384), 0.5: (32, 128, 192, 256),
          0.25: (16, 64, 96, 128)}


class OSBlock(nn.Module):
    def __init__(self, cin: int, cout: int, streams: int = 4, reduction: int = 4):
        super().__init__()
        mid = cout // reduction
        self.reduce = ConvBN(cin, mid, 1)
        self.streams = nn.ModuleList(
            nn.Sequential(*[LiteConv3x3(mid, mid) for _ in range(t + 1)]) for t in range(streams))
        self.gate = ChannelGate(mid)
        self.expand = ConvBN(mid, cout, 1, relu=False)
        self.shortcut = None if cin == cout else ConvBN(cin, cout, 1, relu=False)

    def forward(self, x):
        m = self.reduce(x)
        fused = sum(self.gate(s(m)) for s in self.streams)
        out = self.expand(fused)
        skip = x if self.shortcut is None else self.shortcut(x)
        return (out + skip).relu()


class OSNet(nn.Module):
    """Backbone only: image [N,3,H,W] → feature map [N, C, H/16, W/16] (H/8 with last_stride=1)."""

    def __init__(self, width: float = 1.0, last_stride: int = 2):
        super().__init__()
        if width not in WIDTHS:
            raise ValueError(f"OSNet width must be one of {sorted(WIDTHS)}, got {width}")
        c0, c1, c2, c3 = WIDTHS[width]
        self.stem = nn.Sequential(ConvBN(3, c0, 7, stride=2), nn.MaxPool2d(3, 2, 1))
        self.stage2 = nn.Sequential(OSBlock(c0, c1), OSBlock(c1, c1),
                                    ConvBN(c1, c1, 1), nn.AvgPool2d(2, 2))
        pool3 = nn.AvgPool2d(2, 2) if last_stride == 2 else nn.Identity()
        self.stage3 = nn.Sequential(OSBlock(c1, c2), OSBlock(c2, c2), ConvBN(c2, c2, 1), pool3)
        self.stage4 = nn.Sequential(OSBlock(c2, c3), OSBlock(c3, c3), ConvBN(c3, c3, 1))
        self.out_channels = c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage4(self.stage3(self.stage2(self.stem(x))))
