"""Small building blocks shared by the backbones."""
from torch import nn


class ConvBN(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d → optional ReLU. Pruning and BN folding look for this."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
                 relu: bool = True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class LiteConv3x3(nn.Sequential):
    """OSNet's Lite 3×3: pointwise 1×1 (linear) then depthwise 3×3 → BN → ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 1, bias=False),
                         nn.Conv2d(cout, cout, 3, 1, 1, groups=cout, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ChannelGate(nn.Module):
    """Aggregation gate: global average pool → 1×1 → ReLU → 1×1 → sigmoid, channel-wise weights."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        w = self.pool(x)
        w = self.fc2(self.fc1(w).relu()).sigmoid()
        return x * w
