"""Several students → one ONNX model: `reidtrain ensemble --member A.pt --member B.pt --out M.onnx`.

Two small students distilled into the same teacher space (256-d, trained towards the teacher's
embedding of each view) make errors that only partly coincide: on cuhk03-val the 256×128 student
alone scores 68.5 rank-1 and the 128×64 one 70.1, the mean of their unit embeddings 72.9
(tools/README.md, "Distillation runs"). The exported graph takes the largest member's input
(`input` [N,3,H,W], the usual RGB /255 ImageNet normalisation); a member trained at an integer
fraction of that size sees the input average-pooled by that factor (an area resize, which is how
its training crops were shrunk); each member's embedding is L2-normalised and the output is
their mean, which reidcam normalises again. To the daemon it is one model of one embedding: the
gallery's size per identity does not change.

Measured, and why the shipped default is not one: tools/README.md, "Distillation runs".
"""
import argparse
import sys
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import models
from .export import (check_onnx, export_onnx, flush_tiny, fold_batchnorms, manifest_text)
from .train import load_checkpoint


class Ensemble(nn.Module):
    def __init__(self, nets: list[nn.Module], factors: list[int]):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.factors = factors

    def forward(self, x):
        total = None
        for net, factor in zip(self.nets, self.factors):
            part = net(F.avg_pool2d(x, factor) if factor > 1 else x)
            part = part / torch.sqrt((part * part).sum(dim=1, keepdim=True) + 1e-12)
            total = part if total is None else total + part
        return total / len(self.nets)


def build(checkpoints: list[Path]) -> tuple[Ensemble, int, int, list[str]]:
    """Loads, folds and combines the members; returns (module, height, width, member lines)."""
    loaded = [load_checkpoint(p) for p in checkpoints]
    sizes = [(ck["recipe"]["height_px"], ck["recipe"]["width_px"]) for ck in loaded]
    height, width = max(sizes)
    factors, lines, dims = [], [], set()
    for path, ck, (h, w) in zip(checkpoints, loaded, sizes):
        factor = height // h
        if h * factor != height or w * factor != width:
            raise SystemExit(f"{path}: input {h}x{w} is not {height}x{width} divided by a whole "
                             "number; an ensemble's members must be")
        net = ck["model"]
        fold_batchnorms(net)
        flush_tiny(net)
        dims.add(net.embed_dim)
        factors.append(factor)
        recipe = ck["recipe"]
        lines.append(f"{path.parent.name} ({recipe['arch']} x{recipe['width']}, {h}x{w}, "
                     f"{len(ck.get('history', [])) or recipe['epochs']} epochs)")
    if len(dims) != 1:
        raise SystemExit(f"members embed in different dimensions {sorted(dims)}: they must share "
                         "one space (distilled towards the same teacher)")
    return Ensemble([ck["model"] for ck in loaded], factors).eval(), height, width, lines


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--member", type=Path, action="append", required=True,
                   help="a student checkpoint (repeat; at least two)")
    p.add_argument("--out", type=Path, required=True, help="model .onnx (manifest: same stem .toml)")
    p.add_argument("--name", help="model name in the manifest (default: the file stem)")
    p.add_argument("--int8", type=Path, help="also write an int8 model here (tools/quantize.py)")
    p.add_argument("--calib-count", type=int, default=256)
    p.add_argument("--int8-method", choices=("minmax", "percentile"), default="percentile")


def run(args) -> None:
    import reference

    if len(args.member) < 2:
        sys.exit("ensemble: give at least two --member checkpoints")
    net, height, width, lines = build(args.member)
    export_onnx(net, args.out, height, width, dynamic_batch=True)
    err = check_onnx(net, args.out, height, width)
    dim = net.nets[0].embed_dim
    params = sum(models.count_params(n) for n in net.nets)
    name = args.name or args.out.stem
    version = (f"reidtrain ensemble of {len(lines)} students ({'; '.join(lines)}), "
               f"mean of unit embeddings, exported {date.today().isoformat()}")
    args.out.with_suffix(".toml").write_text(manifest_text(name, version, height, width, dim))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) + manifest: {params:,} "
          f"parameters in {len(lines)} members, input {height}x{width}, embedding {dim}-d; "
          f"onnxruntime relative error {err:.1e}")
    if err > 1e-4:
        sys.exit("ensemble: outputs differ from PyTorch by more than 1e-4 (relative)")
    if args.int8:
        import quantize
        calib = reference.shared_dir() / "data/cuhk03-train/bounding_box_train"
        print(quantize.quantize(args.out, args.int8, args.out.with_suffix(".toml"), calib,
                                args.calib_count, method=args.int8_method))
