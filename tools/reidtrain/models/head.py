"""The embedding head (global pooling + optional BNNeck + ID classifier) around a backbone.

BNNeck (Luo et al., "bag of tricks"): f_t = GAP(map) feeds the triplet (and centre) loss; f_i =
BN(f_t) feeds a bias-free classifier for the ID loss; f_i is the inference embedding. Without the
neck, f_t feeds both losses and is the embedding. Backbones returning several maps (SCL-net's
shallow + deep) get one neck and classifier per map; the embedding is the concatenation.
"""
from dataclasses import dataclass

import torch
from torch import nn

from .osnet import OSNet, WIDTHS as OSNET_WIDTHS
from .sclnet import SCLNet

ARCHS = ("osnet", "sclnet", "retail")
WIDTH_ARCHS = ("osnet", "sclnet")  # the ones built by width multiplier


@dataclass
class Output:
    """Training-time outputs, one entry per feature level."""
    features: list[torch.Tensor]   # pre-BN pooled features (triplet / centre loss)
    logits: list[torch.Tensor]     # ID classifier outputs
    embedding: torch.Tensor | None = None  # the projected embedding (distillation), if any


class EmbeddingNet(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, bnneck: bool = True,
                 fc_dim: int = 0, proj_dim: int = 0):
        super().__init__()
        self.backbone = backbone
        widths = backbone.out_channels
        widths = list(widths) if isinstance(widths, (tuple, list)) else [widths]
        self.bnneck = bnneck
        # Optional embedding layer per level (torchreid's OSNet: Linear → BN → ReLU to 512-d).
        self.fcs = nn.ModuleList()
        if fc_dim:
            for c in widths:
                self.fcs.append(nn.Sequential(nn.Linear(c, fc_dim), nn.BatchNorm1d(fc_dim),
                                              nn.ReLU(inplace=True)))
            widths = [fc_dim] * len(widths)
        self.necks = nn.ModuleList()
        for c in widths:
            bn = nn.BatchNorm1d(c)
            bn.bias.requires_grad_(False)  # BNNeck: no shift before the classifier
            self.necks.append(bn if bnneck else nn.Identity())
        self.classifiers = nn.ModuleList(nn.Linear(c, num_classes, bias=not bnneck) for c in widths)
        # Optional linear projection of the embedding (distillation into a teacher's space): it
        # is then the inference output.
        self.project = nn.Linear(sum(widths), proj_dim) if proj_dim else None
        self.embed_dim = proj_dim or sum(widths)
        self.num_classes = num_classes
        for cls in self.classifiers:
            nn.init.normal_(cls.weight, std=0.001)

    def pooled(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.backbone(x)
        maps = maps if isinstance(maps, list) else [maps]
        feats = [m.mean((2, 3)) for m in maps]
        return [fc(f) for fc, f in zip(self.fcs, feats)] if self.fcs else feats

    def forward(self, x: torch.Tensor):
        feats = self.pooled(x)
        necked = [neck(f) for neck, f in zip(self.necks, feats)]
        embedding = torch.cat(necked, 1)
        project = getattr(self, "project", None)  # checkpoints pickled before it existed
        if project is not None:
            embedding = project(embedding)
        if self.training:
            return Output(feats, [cls(f) for cls, f in zip(self.classifiers, necked)],
                          embedding if project is not None else None)
        return embedding


# Embedding layer width per architecture: OSNet as in the paper / torchreid (so x1.0 has its
# ≈2.2M parameters and x0.25 its ≈0.2M); SCL-net reduces each of its two levels to 256.
FC_DIM = {"osnet": 512, "sclnet": 256}


def build(arch: str, width: float = 1.0, num_classes: int = 751, bnneck: bool = True,
          last_stride: int = 2, fc_dim: int | None = None, proj_dim: int = 0) -> EmbeddingNet:
    if arch == "osnet":
        backbone = OSNet(width, last_stride)
    elif arch == "sclnet":
        backbone = SCLNet(width, last_stride)
    else:
        raise ValueError(f"unknown architecture {arch!r}: expected one of {WIDTH_ARCHS}")
    return EmbeddingNet(backbone, num_classes, bnneck, FC_DIM[arch] if fc_dim is None else fc_dim,
                        proj_dim)


def create(recipe, num_classes: int, proj_dim: int = 0, log=print,
           sample: torch.Tensor | None = None) -> nn.Module:
    """The network a training recipe asks for, initialised as it says (torchreid weights for an
    OSNet; the teacher's ONNX graph for `retail`, converted with `sample` crops if plain)."""
    from pathlib import Path

    if recipe.arch == "retail":
        from .retail import RetailNet, load_onnx

        net = RetailNet(recipe.height_px, recipe.width_px, recipe.streams, num_classes,
                        recipe.plain)
        if proj_dim and proj_dim != net.embed_dim:
            raise SystemExit(f"retail: its embedding is {net.embed_dim}-d, the teacher's "
                             f"{proj_dim}-d: it can only learn a teacher of its own space")
        if recipe.onnx_init:
            log(f"initialised {load_onnx(net, Path(recipe.onnx_init), sample)} tensors from "
                f"{recipe.onnx_init} ({recipe.streams} streams per block"
                f"{', plain' if recipe.plain else ''})")
        return net
    if recipe.onnx_init:
        raise SystemExit("--onnx-init: only for --arch retail")
    net = build(recipe.arch, recipe.width, num_classes, recipe.bnneck, recipe.last_stride,
                proj_dim=proj_dim)
    if recipe.torchreid_init:
        from ..pretrained import load_torchreid

        log(f"initialised {load_torchreid(net, Path(recipe.torchreid_init))} tensors from "
            f"{recipe.torchreid_init}")
    return net


def count_params(net: EmbeddingNet, classifier: bool = False) -> int:
    """Trainable + BN parameters; without the ID classifier unless asked (it is dropped at export)."""
    total = sum(p.numel() for name, p in net.named_parameters()
                if classifier or not name.startswith("classifiers."))
    return total


def count_flops(net: nn.Module, height: int = 256, width: int = 128) -> int:
    """Multiply-accumulates of one inference forward pass (conv and linear layers), by hooks."""
    macs = 0

    def conv_hook(mod, _inp, out):
        nonlocal macs
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        macs += out.numel() * k

    def linear_hook(mod, _inp, out):
        nonlocal macs
        macs += out.numel() * mod.in_features

    hooks = []
    skip = {id(m) for m in getattr(net, "classifiers", [])}  # training-only
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear) and id(m) not in skip:
            hooks.append(m.register_forward_hook(linear_hook))
    was = net.training
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 3, height, width))
    net.train(was)
    for h in hooks:
        h.remove()
    return macs


__all__ = ["ARCHS", "WIDTH_ARCHS", "EmbeddingNet", "Output", "build", "create", "count_params",
           "count_flops", "OSNET_WIDTHS"]
