"""Checkpoint → ONNX (BN folded, post-BN embedding as the output) + reidcam manifest (+ int8).

The exported graph maps `input` [N,3,H,W] (RGB, /255, ImageNet mean/std) to `embedding` [N,D]:
the inference feature (post-BNNeck when the model has one), not normalised — reidcam normalises.
Every BatchNorm is folded into the conv / linear layer before it; a BNNeck that follows a ReLU
becomes one per-channel multiply-add. The export is checked against PyTorch with onnxruntime.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch import nn

import reference
from reference import IMAGENET_MEAN, IMAGENET_STD

from . import models
from .train import load_checkpoint

OPSET = 13


class Affine(nn.Module):
    """y = x·scale + shift per channel: an inference-mode BatchNorm1d with nothing to fold into."""

    def __init__(self, bn: nn.BatchNorm1d):
        super().__init__()
        scale = bn.weight.data / torch.sqrt(bn.running_var + bn.eps)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", bn.bias.data - bn.running_mean * scale)

    def forward(self, x):
        return x * self.scale + self.shift


def _fold_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    scale = bn.weight.data / torch.sqrt(bn.running_var + bn.eps)
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    bias = layer.bias.data if layer.bias is not None else torch.zeros_like(bn.running_mean)
    layer.weight.data = layer.weight.data * scale.view(shape)
    layer.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.data)


def fold_batchnorms(net: nn.Module) -> int:
    """Folds every BN that directly follows a conv/linear inside an nn.Sequential; turns the rest
    of the 1-D ones (BNNeck) into `Affine`. Returns the number of BNs removed. In place, eval."""
    net.eval()
    folded = 0
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        for i in range(1, len(seq)):
            prev, cur = seq[i - 1], seq[i]
            if isinstance(cur, (nn.BatchNorm2d, nn.BatchNorm1d)) and isinstance(prev, (nn.Conv2d, nn.Linear)):
                _fold_into(prev, cur)
                seq[i] = nn.Identity()
                folded += 1
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm1d):
                setattr(parent, name, Affine(child))
                folded += 1
            elif isinstance(child, nn.BatchNorm2d):
                raise ValueError(f"BatchNorm2d {name!r} does not follow a conv: cannot fold")
    return folded


# Weights below this magnitude are set to zero at export. Weight decay leaves some weights near
# zero, and a few of them subnormal (< 1.2e-38), or small enough that their products are: x86
# handles subnormal arithmetic in microcode, and one such model ran 1.7x slower than the same
# architecture without them (2.70 vs 1.54 ms per crop in `reidcam bench`). Their contribution to
# any output is below 1e-20 of an activation.
TINY = 1e-20


def flush_tiny(net: nn.Module) -> int:
    """Zeroes every parameter and buffer element smaller than TINY in magnitude; returns how many."""
    flushed = 0
    with torch.no_grad():
        for t in list(net.parameters()) + list(net.buffers()):
            if t.is_floating_point():
                tiny = (t != 0) & (t.abs() < TINY)
                flushed += int(tiny.sum())
                t[tiny] = 0.0
    return flushed


def export_onnx(net: models.EmbeddingNet, out: Path, height: int, width: int,
                dynamic_batch: bool = True) -> None:
    net.eval()
    x = torch.zeros(1, 3, height, width)
    kwargs = dict(input_names=["input"], output_names=["embedding"], opset_version=OPSET,
                  do_constant_folding=True, dynamo=False)
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, "embedding": {0: "batch"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net, (x,), str(out), **kwargs)


def manifest_text(name: str, version: str, height: int, width: int, dim: int,
                  mean_std: tuple[list[float], list[float]] = (IMAGENET_MEAN, IMAGENET_STD)) -> str:
    mean = ", ".join(f"{v}" for v in mean_std[0])
    std = ", ".join(f"{v}" for v in mean_std[1])
    return (f'[model]\nname = "{name}"\nversion = "{version}"\n\n'
            f'[input]\nname = "input"\nheight = {height}\nwidth = {width}\n'
            f'channel_order = "rgb"\npixel_divisor = 255.0\nmean = [{mean}]\nstd = [{std}]\n\n'
            f'[output]\nname = "embedding"\ndim = {dim}\n')


def check_onnx(net: nn.Module, path: Path, height: int, width: int, seed: int = 0) -> float:
    """Largest |PyTorch − onnxruntime| over a random batch, relative to the largest |output|."""
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(
        (4, 3, height, width)).astype(np.float32))
    with torch.no_grad():
        ref = net.eval()(x).numpy()
    got = reference.session(path).run(None, {"input": x.numpy()})[0]
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))


def export_checkpoint(checkpoint: Path, out: Path, name: str | None = None,
                      dynamic_batch: bool = True) -> dict:
    return export_model(load_checkpoint(checkpoint), out, name, dynamic_batch)


def export_model(ck: dict, out: Path, name: str | None = None, dynamic_batch: bool = True) -> dict:
    """Exports a loaded checkpoint (its module's BNs are folded in place) + writes the manifest."""
    net, recipe = ck["model"], ck["recipe"]
    h, w = recipe["height_px"], recipe["width_px"]
    net.eval()
    # A plain retail network's input affine goes into the manifest's mean/std (models/retail.py).
    mean_std = (net.take_input_affine(IMAGENET_MEAN, IMAGENET_STD)
                if hasattr(net, "take_input_affine") else (IMAGENET_MEAN, IMAGENET_STD))
    with torch.no_grad():
        probe = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, h, w)).astype(np.float32))
        before = net(probe)
    folded = fold_batchnorms(net)
    flushed = flush_tiny(net)
    with torch.no_grad():
        fold_err = float((net(probe) - before).abs().max() / before.abs().max())
    export_onnx(net, out, h, w, dynamic_batch)
    ort_err = check_onnx(net, out, h, w)
    name = name or out.stem
    epochs = len(ck.get("history", [])) or recipe["epochs"]
    shape = (f"retail-0267's network{' (plain)' if recipe.get('plain') else ''}, "
             f"{recipe['streams']} streams per block"
             if recipe["arch"] == "retail" else
             f"{recipe['arch']} x{recipe['width']} {'BNNeck' if recipe['bnneck'] else 'no neck'}")
    version = (f"reidtrain {shape}, {h}x{w}, {epochs} epochs"
               + (f", pruned {ck['ratio']:.0%}" if "ratio" in ck else "")
               + (f", from {Path(recipe['init']).parent.name}" if recipe.get("init") else "")
               + (f", from {Path(recipe['torchreid_init']).name}"
                  if recipe.get("torchreid_init") else "")
               + (f", from {Path(recipe['onnx_init']).name}" if recipe.get("onnx_init") else "")
               + (f", distilled from {Path(recipe['teacher']).stem}" if recipe.get("teacher") else "")
               + f", exported {date.today().isoformat()}")
    out.with_suffix(".toml").write_text(manifest_text(name, version, h, w, net.embed_dim,
                                                      mean_std))
    return {"folded": folded, "flushed": flushed, "fold_error": fold_err, "onnxruntime_error": ort_err,
            "params": models.count_params(net), "dim": net.embed_dim, "height": h, "width": w}


def calibrate(model: Path, data: Path, fmr: float = 0.001) -> str:
    """The `[matching]` section `reidcam calibrate` suggests for `model` on `data`."""
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run([str(reference.reidcam_binary()), "calibrate", "--model", str(model),
                              "--data", str(data), "--fmr", str(fmr), "--json",
                              "--plot", str(Path(tmp) / "calibrate.svg")],
                             capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"reidcam calibrate {model}: {run.stderr.strip()}")
    return json.loads(run.stdout)["config_snippet"]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="model .onnx (manifest: same stem .toml)")
    p.add_argument("--name", help="model name in the manifest (default: the file stem)")
    p.add_argument("--fixed-batch", action="store_true", help="batch 1 instead of dynamic")
    p.add_argument("--int8", type=Path, help="also write an int8 model here (tools/quantize.py)")
    p.add_argument("--calib-dir", type=Path, help="int8 calibration crops (default: the shared "
                   "cuhk03-train bounding_box_train)")
    p.add_argument("--calib-count", type=int, default=256)
    p.add_argument("--int8-method", choices=("minmax", "percentile"), default="minmax",
                   help="int8 activation ranges: MinMax, or the 99.999th percentile")
    p.add_argument("--calibrate", type=Path, metavar="DIR",
                   help="add the [matching] threshold from `reidcam calibrate` on this "
                        "Market-layout directory (false-match rate 0.1%%)")


def run(args) -> None:
    info = export_checkpoint(args.checkpoint, args.out, args.name, not args.fixed_batch)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) + manifest: "
          f"{info['params']:,} parameters, {info['folded']} BatchNorms folded, embedding "
          f"{info['dim']}-d, input {info['height']}x{info['width']}; relative error: "
          f"folding {info['fold_error']:.1e} ({info['flushed']} weights below {TINY:g} set to 0), "
          f"onnxruntime {info['onnxruntime_error']:.1e}")
    if info["onnxruntime_error"] > 1e-4 or info["fold_error"] > 1e-4:
        sys.exit("export: outputs differ from PyTorch by more than 1e-4 (relative)")
    if args.calibrate:
        snippet = calibrate(args.out, args.calibrate)
        manifest = args.out.with_suffix(".toml")
        manifest.write_text(manifest.read_text() + "\n" + snippet)
        print(snippet.strip())
    if args.int8:
        import quantize  # onnxruntime's quantiser: loaded only when asked for
        calib = args.calib_dir or reference.shared_dir() / "data/cuhk03-train/bounding_box_train"
        print(quantize.quantize(args.out, args.int8, args.out.with_suffix(".toml"), calib,
                                args.calib_count, method=args.int8_method))
