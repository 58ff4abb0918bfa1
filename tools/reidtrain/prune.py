"""Structured filter pruning: remove whole channels inside the residual blocks, ranked by the
BN scale |γ| of the layers that produce them (network slimming's criterion; L1 of BN scales),
then fine-tune with `train --init`.

Only block-internal channels are pruned; the block outputs that meet in residual additions stay,
so every pruning group is local and the network keeps its interface (input, embedding width).
- OSNet block: the 1×1 reduction's outputs (feeding every stream); each Lite 3×3's outputs
  inside a stream; the fused width (the four streams' last Lite layers, the gate, the expansion's
  inputs) as one coupled group.
- SCL-net SC-unit: chain A (a1 and its depthwise a2) and chain B (b1, b2) each as one group; both
  keep the same count so the channel shuffle stays a regular interleave.
"""
import argparse
import math
from pathlib import Path

import torch
from torch import nn

from . import models
from .models.layers import ChannelGate, LiteConv3x3
from .models.osnet import OSBlock
from .models.sclnet import SCBlock, SCUnit
from .train import load_checkpoint, save_atomic


# --- slicing primitives --------------------------------------------------------------------

def _keep_out(m: nn.Module, idx: torch.Tensor) -> None:
    """Keep output channels `idx` of a conv / linear / batch norm (and depthwise groups)."""
    if isinstance(m, nn.BatchNorm2d):
        m.weight.data, m.bias.data = m.weight.data[idx], m.bias.data[idx]
        m.running_mean, m.running_var = m.running_mean[idx], m.running_var[idx]
        m.num_features = len(idx)
    elif isinstance(m, nn.Conv2d):
        m.weight.data = m.weight.data[idx]
        if m.bias is not None:
            m.bias.data = m.bias.data[idx]
        if m.groups == m.in_channels and m.groups > 1:  # depthwise: in = out = groups
            m.in_channels = m.groups = len(idx)
        m.out_channels = len(idx)
    else:
        raise TypeError(f"cannot prune outputs of {type(m).__name__}")


def _keep_in(m: nn.Module, idx: torch.Tensor) -> None:
    if isinstance(m, nn.Conv2d) and m.groups == 1:
        m.weight.data = m.weight.data[:, idx]
        m.in_channels = len(idx)
    else:
        raise TypeError(f"cannot prune inputs of {type(m).__name__} (groups {m.groups})")


def _ranked(score: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores, in their original order."""
    return torch.sort(torch.topk(score, keep).indices).values


def _keep_count(n: int, ratio: float, multiple: int = 1) -> int:
    k = max(multiple, int(math.ceil(n * (1 - ratio) / multiple)) * multiple)
    return min(n, k)


def _gamma(bn: nn.BatchNorm2d) -> torch.Tensor:
    return bn.weight.data.abs()


# --- OSNet ---------------------------------------------------------------------------------

def _lite_parts(lite: LiteConv3x3) -> tuple[nn.Conv2d, nn.Conv2d, nn.BatchNorm2d]:
    return lite[0], lite[1], lite[2]


def _prune_gate(gate: ChannelGate, idx: torch.Tensor) -> None:
    gate.fc1.weight.data = gate.fc1.weight.data[:, idx]
    gate.fc1.in_channels = len(idx)
    gate.fc2.weight.data = gate.fc2.weight.data[idx]
    gate.fc2.bias.data = gate.fc2.bias.data[idx]
    gate.fc2.out_channels = len(idx)


def prune_osblock(block: OSBlock, ratio: float) -> None:
    # 1. reduction outputs → first Lite 1×1 of every stream
    conv, bn = block.reduce[0], block.reduce[1]
    idx = _ranked(_gamma(bn), _keep_count(bn.num_features, ratio))
    _keep_out(conv, idx), _keep_out(bn, idx)
    for stream in block.streams:
        _keep_in(stream[0][0], idx)
    # 2. inside each stream: every Lite layer but the last
    for stream in block.streams:
        for j in range(len(stream) - 1):
            pw, dw, bn = _lite_parts(stream[j])
            idx = _ranked(_gamma(bn), _keep_count(bn.num_features, ratio))
            for m in (pw, dw, bn):
                _keep_out(m, idx)
            _keep_in(stream[j + 1][0], idx)
    # 3. the fused width: last Lite of every stream, the gate, the expansion's inputs
    lasts = [_lite_parts(stream[-1]) for stream in block.streams]
    score = sum(_gamma(bn) for _, _, bn in lasts)
    idx = _ranked(score, _keep_count(len(score), ratio))
    for parts in lasts:
        for m in parts:
            _keep_out(m, idx)
    _prune_gate(block.gate, idx)
    _keep_in(block.expand[0], idx)


# --- SCL-net -------------------------------------------------------------------------------

def prune_scunit(unit: SCUnit, ratio: float) -> torch.Tensor:
    """Prunes both chains to the same count; returns the kept output channels (old indices,
    in the new order) for the consumers."""
    q = unit.a1[1].num_features
    keep = _keep_count(q, ratio)
    kept = []
    for first, second in ((unit.a1, unit.a2), (unit.b1, unit.b2)):
        idx = _ranked(_gamma(first[1]) + _gamma(second[1]), keep)
        for m in (first[0], first[1], second[0], second[1]):
            _keep_out(m, idx)
        kept.append(idx)
    a_idx, b_idx = kept
    # concat(a1, a2, b1, b2) then shuffle(4): old output channel of part p, index i = i·4 + p
    parts = (a_idx, a_idx, b_idx, b_idx)
    return torch.tensor([int(parts[p][i]) * 4 + p for i in range(keep) for p in range(4)])


def _prune_scunit_inputs(unit: SCUnit, idx: torch.Tensor) -> None:
    _keep_in(unit.a1[0], idx)
    for m in (unit.b0[0], unit.b0[1]):  # depthwise on the input: follows the input channels
        _keep_out(m, idx)
    _keep_in(unit.b1[0], idx)


def prune_scblock(block: SCBlock, ratio: float) -> None:
    first, second = block.units
    idx = prune_scunit(first, ratio)
    _prune_scunit_inputs(second, idx)
    idx = prune_scunit(second, ratio)
    _prune_gate(block.gate, idx)
    _keep_in(block.expand[0], idx)


# --- whole networks ------------------------------------------------------------------------

def prune(net: models.EmbeddingNet, ratio: float) -> int:
    """Prunes `ratio` of every block-internal channel group in place; returns blocks pruned."""
    if not 0 < ratio < 1:
        raise ValueError(f"pruning ratio must be in (0, 1), got {ratio}")
    n = 0
    for m in net.modules():
        if isinstance(m, OSBlock):
            prune_osblock(m, ratio)
            n += 1
        elif isinstance(m, SCBlock):
            prune_scblock(m, ratio)
            n += 1
    if n == 0:
        raise ValueError("no prunable blocks found (expected OSNet or SCL-net)")
    return n


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="trained OUT/last.pt")
    p.add_argument("--ratio", type=float, default=0.5,
                   help="fraction of each block-internal channel group to remove")
    p.add_argument("--out", type=Path, required=True,
                   help="pruned checkpoint (fine-tune it with `train --init`)")


def run(args) -> None:
    ck = load_checkpoint(args.checkpoint)
    net = ck["model"]
    before = (models.count_params(net), models.count_flops(net, 256, 128))
    blocks = prune(net, args.ratio)
    after = (models.count_params(net), models.count_flops(net, 256, 128))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"model": net, "recipe": ck["recipe"], "classes": ck.get("classes"),
                 "pruned_from": str(args.checkpoint), "ratio": args.ratio}, args.out)
    print(f"pruned {blocks} blocks by {args.ratio:.0%}: parameters {before[0]:,} → {after[0]:,} "
          f"({after[0] / before[0]:.2f}×), MACs @256×128 {before[1] / 1e6:.1f} M → "
          f"{after[1] / 1e6:.1f} M ({after[1] / before[1]:.2f}×) → {args.out}")

