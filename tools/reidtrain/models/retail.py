"""The network of `person-reidentification-retail-0267` (Intel, Apache-2.0), to fine-tune and cut down.

Read from its ONNX graph: an OSNet x0.5 (stage widths 32/128/192/256, bottlenecks of 4 streams
of Lite 3×3 convolutions) with
- instance normalisation of the input image and after the 7×7 stem convolution (both affine);
- in each stage's first block an SE aggregation gate (GAP → 1×1 → ReLU → 1×1 → sigmoid), in the
  second a group-norm gate (GAP → GroupNorm of 16 groups → sigmoid);
- a learnt global pooling: a depthwise convolution the size of the last feature map (16×8 at
  256×128), with bias;
- a 256-d head: Linear → BatchNorm1d → PReLU. That output is the embedding.

Module names are the graph's initializer names, so `load_onnx` fills every tensor by name and
checks each shape.

`plain=True` is the same network in the form reidcam's kernels run whole (every op fused, no
output allocated per crop): the input's instance norm becomes a fixed per-channel affine that
export moves into the manifest's mean/std; the stem's instance norm a BatchNorm (folded at
export); each group-norm gate a per-channel affine gate (sigmoid(a·mean + b)); the PReLU (slope 1.006
on negatives) is dropped. `load_onnx`
converts the teacher's weights to it with statistics measured on sample crops — each norm
replaced by the affine map it applies on average — and fine-tuning does the rest. `streams` keeps the first 1–4 streams of every block (the dropped ones are
the deepest: 4, then 3 Lite convolutions); the input size resizes the pooling kernel by area
(total weight kept). Both are how `reidtrain` cuts the teacher down before fine-tuning it.
"""
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

STAGES = ((32, 128), (128, 192), (192, 256))  # (input, output) channels of each stage's blocks
STEM = 32
GN_GROUPS = 16
GN_EPS = 1e-5  # the graph's `mvn_eps`


def conv_bn(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    """1×1 conv (no bias) → BN (→ ReLU), named `conv`/`bn` as in the graph."""
    layers = [("conv", nn.Conv2d(cin, cout, 1, bias=False)), ("bn", nn.BatchNorm2d(cout))]
    if relu:
        layers.append(("relu", nn.ReLU(inplace=True)))
    return nn.Sequential(OrderedDict(layers))


def lite(c: int) -> nn.Sequential:
    """Lite 3×3: 1×1 (linear) → depthwise 3×3 → BN → ReLU."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(c, c, 1, bias=False)),
        ("conv2", nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)),
        ("bn", nn.BatchNorm2d(c)), ("relu", nn.ReLU(inplace=True))]))


class SEGate(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 16, 1)
        self.fc2 = nn.Conv2d(c // 16, c, 1)

    def forward(self, x):
        return x * self.fc2(self.fc1(x.mean((2, 3), keepdim=True)).relu()).sigmoid()


class GNGate(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.gn = nn.GroupNorm(GN_GROUPS, c, eps=GN_EPS)

    def forward(self, x):
        return x * self.gn(x.mean((2, 3), keepdim=True)).sigmoid()


class AffineGate(nn.Module):
    """x · sigmoid(a ⊙ mean(x) + b): a group-norm gate with the group statistics made constant."""

    def __init__(self, c: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.scale = nn.Parameter(torch.ones(1, c, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x):
        return x * (self.pool(x) * self.scale + self.shift).sigmoid()


class InputAffine(nn.Module):
    """A fixed per-channel `x · scale + shift` on the normalised image (what the input's instance
    norm does on average); export moves it into the manifest's mean and std."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.ones(1, 3, 1, 1))
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))

    def forward(self, x):
        return x * self.scale + self.shift


class Block(nn.Module):
    NAMES = ("conv2a", "conv2b", "conv2c", "conv2d")

    def __init__(self, cin: int, cout: int, gate: str, streams: int, plain: bool = False):
        super().__init__()
        mid = cout // 4
        self.conv1 = conv_bn(cin, mid)
        for t in range(streams):
            setattr(self, self.NAMES[t], lite(mid) if t == 0 else
                    nn.Sequential(*[lite(mid) for _ in range(t + 1)]))
        self.streams = streams
        self.gate = SEGate(mid) if gate == "se" else AffineGate(mid) if plain else GNGate(mid)
        self.conv3 = conv_bn(mid, cout, relu=False)
        self.downsample = conv_bn(cin, cout, relu=False) if cin != cout else None

    def forward(self, x):
        m = self.conv1(x)
        fused = sum(self.gate(getattr(self, self.NAMES[t])(m)) for t in range(self.streams))
        skip = x if self.downsample is None else self.downsample(x)
        return (self.conv3(fused) + skip).relu()


class Stem(nn.Sequential):
    """7×7/2 conv → norm → ReLU. A Sequential of the two layers, so that export folds a plain
    network's BatchNorm into the conv; the ReLU is in `forward`, as checkpoints pickled it."""

    def __init__(self, plain: bool = False):
        norm = nn.BatchNorm2d(STEM) if plain else nn.InstanceNorm2d(STEM, affine=True)
        super().__init__(OrderedDict([("conv", nn.Conv2d(3, STEM, 7, 2, 3, bias=False)),
                                      ("bn", norm)]))

    def forward(self, x):
        return self.bn(self.conv(x)).relu()


class RetailNet(nn.Module):
    """Image [N,3,H,W] (RGB, /255, ImageNet mean/std) → 256-d embedding; H, W multiples of 16.

    Training mode returns the `head.Output` the distillation loop reads (the pooled feature for
    the triplet loss, the ID logits of `classifier` on the BN'd feature, the embedding)."""

    def __init__(self, height: int = 256, width: int = 128, streams: int = 4,
                 num_classes: int = 0, plain: bool = False):
        super().__init__()
        if height % 16 or width % 16 or not 1 <= streams <= 4:
            raise ValueError(f"RetailNet: input {height}x{width} must be multiples of 16 and "
                             f"streams 1-4, got {streams}")
        self.in_first = InputAffine() if plain else nn.InstanceNorm2d(3, affine=True)
        self.conv1 = Stem(plain)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (cin, cout) in enumerate(STAGES):
            layers = [Block(cin if i else STEM, cout, "se", streams, plain),
                      Block(cout, cout, "gn", streams, plain)]
            if i < 2:
                layers.append(nn.Sequential(conv_bn(cout, cout), nn.AvgPool2d(2, 2)))
            setattr(self, f"conv{i + 2}", nn.Sequential(*layers))
        c = STAGES[-1][1]
        self.conv5 = conv_bn(c, c)
        self.global_avgpool = nn.Conv2d(c, c, (height // 16, width // 16), groups=c)
        self.fc = nn.Sequential(nn.Linear(c, c), nn.BatchNorm1d(c),
                                *([] if plain else [nn.PReLU(1)]))
        # The ID classifier (training only; not exported), named as in `EmbeddingNet`.
        self.classifiers = nn.ModuleList([nn.Linear(c, num_classes, bias=False)] if num_classes else [])
        self.embed_dim = c
        self.num_classes = num_classes
        self.streams = streams
        self.plain = plain
        self.size = (height, width)

    def take_input_affine(self, mean, std) -> tuple[list[float], list[float]]:
        """Removes a plain network's input affine and returns the manifest mean/std that make
        reidcam's preprocessing apply it: ((p − m)/s)·k + t = (p − (m − t·s/k)) / (s/k)."""
        if not isinstance(self.in_first, InputAffine):
            return list(mean), list(std)
        k = self.in_first.scale.flatten().tolist()
        t = self.in_first.shift.flatten().tolist()
        if min(k) <= 0:
            raise ValueError(f"input affine scale {k}: a manifest std must be positive")
        self.in_first = nn.Identity()
        return ([m - ti * si / ki for m, si, ki, ti in zip(mean, std, k, t)],
                [si / ki for si, ki in zip(std, k)])

    def forward(self, x):
        from .head import Output

        x = self.maxpool(self.conv1(self.in_first(x)))
        x = self.conv5(self.conv4(self.conv3(self.conv2(x))))
        pooled = self.global_avgpool(x).flatten(1)
        z = self.fc[1](self.fc[0](pooled))
        embedding = self.fc[2](z) if len(self.fc) > 2 else z
        if not self.training or not self.classifiers:
            return embedding
        return Output([pooled], [self.classifiers[0](z)], embedding)


def onnx_weights(path: Path) -> dict[str, torch.Tensor]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
            for t in graph.initializer}


def resize_pool(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The learnt pooling kernel [C,1,h,w] resampled by area to `size`, its total weight kept."""
    if tuple(kernel.shape[2:]) == size:
        return kernel
    out = F.interpolate(kernel, size=size, mode="area")
    return out * (kernel.shape[2] * kernel.shape[3]) / (size[0] * size[1])


def load_onnx(net: RetailNet, path: Path, sample: torch.Tensor | None = None) -> int:
    """Fills `net` from the teacher's graph by name (every tensor of `net` but the classifier
    must be there, with its shape; the dropped streams' tensors are left out). Returns the
    number of tensors loaded. A plain `net` is converted (see the module docs) with statistics
    measured on `sample`, normalised crops [N,3,H,W] at its input size."""
    if net.plain:
        if sample is None:
            raise ValueError("a plain network needs sample crops to convert the norms")
        return convert_to_plain(net, path, sample)
    theirs = onnx_weights(path)
    ours = net.state_dict()
    loaded = 0
    for name, value in ours.items():
        if name.startswith("classifiers."):
            continue
        if name not in theirs:
            raise ValueError(f"{path}: no tensor {name!r} (not person-reidentification-retail-0267?)")
        src = theirs[name]
        if name == "global_avgpool.weight":
            src = resize_pool(src, tuple(value.shape[2:]))
        elif name.endswith("num_batches_tracked"):
            src = src.reshape(value.shape).to(value.dtype)
        if src.shape != value.shape:
            raise ValueError(f"{path}: {name} has shape {tuple(src.shape)}, expected "
                             f"{tuple(value.shape)}")
        ours[name] = src
        loaded += 1
    net.load_state_dict(ours)
    return loaded


@torch.no_grad()
def convert_to_plain(net: RetailNet, path: Path, sample: torch.Tensor) -> int:
    """Loads the teacher into its own form at `net`'s size, measures what each norm does on
    `sample`, and writes the plain equivalents into `net` (see the module docs)."""
    ref = RetailNet(*net.size, net.streams)
    loaded = load_onnx(ref, path)
    ref.eval()
    stats: dict[str, list[torch.Tensor]] = {}

    def keep(name):
        def hook(_mod, inputs, _out):
            stats.setdefault(name, []).append(inputs[0])
        return hook

    hooks = [ref.in_first.register_forward_hook(keep("in_first")),
             ref.conv1.bn.register_forward_hook(keep("stem"))]
    for name, mod in ref.named_modules():
        if isinstance(mod, GNGate):
            hooks.append(mod.register_forward_hook(keep(name)))
    ref(sample)
    for h in hooks:
        h.remove()
    ours = net.state_dict()
    for name, value in ref.state_dict().items():
        if name in ours and ours[name].shape == value.shape:
            ours[name] = value
    # Input instance norm → its average affine: per-image channel means and deviations.
    x = stats["in_first"][0]
    mu, sd = x.mean((2, 3)), (x.var((2, 3), unbiased=False) + ref.in_first.eps).sqrt()
    k = ref.in_first.weight / sd.mean(0)
    ours["in_first.scale"] = k.view(1, 3, 1, 1)
    ours["in_first.shift"] = (ref.in_first.bias - k * mu.mean(0)).view(1, 3, 1, 1)
    # Stem instance norm → BatchNorm with the average per-image statistics (its affine weight
    # and bias are copied above, with the pooling kernel, already at `net`'s size).
    y = stats["stem"][0]
    ours["conv1.bn.running_mean"] = y.mean((2, 3)).mean(0)
    ours["conv1.bn.running_var"] = y.var((2, 3), unbiased=False).mean(0)
    # Group-norm gates → per-channel affine gates, over all streams' pooled vectors.
    for name, mod in ref.named_modules():
        if not isinstance(mod, GNGate):
            continue
        g = torch.cat([v.mean((2, 3)) for v in stats[name]])        # [N·streams, C]
        groups = g.view(len(g), GN_GROUPS, -1)
        mean = groups.mean(2, keepdim=True).expand_as(groups).reshape(len(g), -1).mean(0)
        std = (groups.var(2, unbiased=False, keepdim=True) + mod.gn.eps).sqrt()
        std = std.expand_as(groups).reshape(len(g), -1).mean(0)
        scale = mod.gn.weight / std
        ours[f"{name}.scale"] = scale.view(1, -1, 1, 1)
        ours[f"{name}.shift"] = (mod.gn.bias - scale * mean).view(1, -1, 1, 1)
    net.load_state_dict(ours)
    return loaded

