"""Training (BNNeck bag-of-tricks recipe) with resumable checkpoints and progress output.

Checkpoints (`OUT/last.pt`, written atomically after every epoch) hold the whole module (so a
pruned network with uneven widths reloads as it is), both optimisers, the sampler and RNG states
and the per-epoch log; `--resume` continues bit-for-bit where the last epoch ended.
"""
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import models
from .augment import Augment
from .data import load_dir, train_dir
from .evaluate import Evaluator
from .losses import ReidLoss
from .sampler import PKSampler


@dataclass
class Recipe:
    arch: str = "osnet"
    width: float = 0.25
    height_px: int = 128
    width_px: int = 64
    bnneck: bool = True
    last_stride: int = 2
    epochs: int = 30
    p: int = 16
    k: int = 4
    lr: float = 1.5e-3
    weight_decay: float = 5e-4
    warmup: int = 3
    label_smoothing: float = 0.1
    margin: float = 0.3
    center_weight: float = 5e-4
    center_lr: float = 0.5
    seed: int = 1
    torchreid_init: str = ""  # start from these torchreid weights (OSNet only)
    onnx_init: str = ""       # start from retail-0267's ONNX graph (`retail` only)
    streams: int = 4          # `retail`: streams kept in every block
    plain: bool = False       # `retail`: the form reidcam's kernels run whole (models/retail.py)
    init: str = ""            # start from this checkpoint's module (e.g. a pruned network)


def lr_at(recipe: Recipe, progress: float) -> float:
    """Linear warm-up from 10 % over `warmup` epochs, then cosine down to 1 % (progress in epochs)."""
    if progress < recipe.warmup:
        return recipe.lr * (0.1 + 0.9 * progress / recipe.warmup)
    span = max(recipe.epochs - recipe.warmup, 1e-9)
    t = min((progress - recipe.warmup) / span, 1.0)
    return recipe.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict:
    # Our own checkpoints hold the pickled module (pruned widths survive); only load trusted files.
    return torch.load(path, map_location="cpu", weights_only=False)


def train(recipe: Recipe, data: Path, out: Path, val: Path | None = None, eval_every: int = 5,
          resume: bool = False, init: Path | None = None, threads: int | None = None,
          max_batches: int | None = None, stop_after: int | None = None, log=print) -> dict:
    """Trains (or resumes) and returns {"model", "history", "recipe"}. `stop_after` ends the run
    after that many epochs in total, on the full run's schedule (resume it later)."""
    if threads:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    images = load_dir(train_dir(data), recipe.height_px, recipe.width_px, keep_distractors=False)
    classes, labels = np.unique(images.pids, return_inverse=True)
    pixels = torch.from_numpy(images.pixels)
    targets = torch.from_numpy(labels)
    torch.manual_seed(recipe.seed)
    if init is not None:
        ck = load_checkpoint(init)
        net = ck["model"]
        if net.num_classes != len(classes):
            raise SystemExit(f"{init}: trained on {net.num_classes} identities, {data} has "
                             f"{len(classes)}")
        # the architecture is the checkpoint's, whatever the command line said
        theirs = ck["recipe"]
        recipe = replace(recipe, arch=theirs["arch"], width=theirs["width"],
                         bnneck=theirs["bnneck"], last_stride=theirs["last_stride"],
                         init=str(init))
    else:
        net = models.create(recipe, len(classes), log=log)
    criterion = ReidLoss(len(classes), [c.in_features for c in net.classifiers],
                         recipe.label_smoothing, recipe.margin, recipe.center_weight)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    center_opt = torch.optim.SGD(criterion.parameters(), lr=recipe.center_lr) \
        if recipe.center_weight > 0 else None
    sampler = PKSampler(labels, recipe.p, recipe.k, recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    augment = Augment(recipe.height_px, generator=gen)
    history: list[dict] = []
    start_epoch = 0
    last = out / "last.pt"
    if resume and last.is_file():
        ck = load_checkpoint(last)
        if ck["recipe"] != asdict(recipe):
            raise SystemExit(f"{last}: recipe differs from this command's; use another --out "
                             f"or the same options\n  saved: {ck['recipe']}")
        net = ck["model"]
        opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        opt.load_state_dict(ck["optimizer"])
        criterion.load_state_dict(ck["criterion"])
        if center_opt is not None:
            center_opt.load_state_dict(ck["center_optimizer"])
        sampler.restore(ck["sampler"])
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        history, start_epoch = ck["history"], ck["epoch"]
        log(f"resumed from {last} at epoch {start_epoch}")
    evaluator = Evaluator(val, recipe.height_px, recipe.width_px) if val else None
    log(f"{recipe.arch} x{recipe.width} {'BNNeck' if recipe.bnneck else 'no neck'}: "
        f"{models.count_params(net):,} parameters, {len(images)} images of {len(classes)} "
        f"identities at {recipe.height_px}x{recipe.width_px}, {recipe.epochs} epochs")
    net.train()
    end = min(recipe.epochs, stop_after) if stop_after else recipe.epochs
    for epoch in range(start_epoch, end):
        batches = sampler.epoch()
        if max_batches:
            batches = batches[:max_batches]
        t0, sums = time.time(), {}
        for b, idx in enumerate(batches):
            lr = lr_at(recipe, epoch + b / len(batches))
            for group in opt.param_groups:
                group["lr"] = lr
            x = augment(pixels[idx])
            y = targets[idx]
            loss, parts = criterion(net(x), y)
            opt.zero_grad()
            if center_opt is not None:
                center_opt.zero_grad()
            loss.backward()
            opt.step()
            if center_opt is not None:
                for p in criterion.parameters():
                    p.grad.mul_(1.0 / recipe.center_weight)
                center_opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if (b + 1) % 20 == 0 or b + 1 == len(batches):
                rate = (b + 1) * len(idx) / (time.time() - t0)
                left = (len(batches) - b - 1) * len(idx) / rate
                losses = " ".join(f"{k} {v / (b + 1):.3f}" for k, v in sums.items())
                log(f"epoch {epoch + 1}/{recipe.epochs} batch {b + 1}/{len(batches)} {losses} "
                    f"lr {lr:.2e} {rate:.0f} img/s, epoch ends in {left:.0f} s")
        entry = {"epoch": epoch + 1, "seconds": round(time.time() - t0, 1),
                 **{k: round(v / len(batches), 4) for k, v in sums.items()}}
        if evaluator and ((epoch + 1) % eval_every == 0 or epoch + 1 == recipe.epochs):
            entry.update(evaluator(net))
            log(f"epoch {epoch + 1}: {val.name} rank-1 {entry['rank1']:.2f} mAP {entry['mAP']:.2f}")
        history.append(entry)
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        save_atomic({"model": net, "optimizer": opt.state_dict(),
                     "criterion": criterion.state_dict(),
                     "center_optimizer": center_opt.state_dict() if center_opt else None,
                     "sampler": sampler.state(), "generator": gen.get_state(),
                     "torch_rng": torch.get_rng_state(), "history": history, "epoch": epoch + 1,
                     "recipe": asdict(recipe), "classes": classes.tolist()}, last)
    return {"model": net, "history": history, "recipe": recipe}


def recipe_args(parser) -> None:
    d = Recipe()
    parser.add_argument("--arch", choices=models.ARCHS, default=d.arch)
    parser.add_argument("--width", type=float, default=d.width, help="width multiplier")
    parser.add_argument("--size", default=f"{d.height_px}x{d.width_px}",
                        help="input H x W in pixels (default %(default)s)")
    parser.add_argument("--no-bnneck", action="store_true", help="train without the BNNeck")
    parser.add_argument("--last-stride", type=int, choices=(1, 2), default=d.last_stride)
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--p", type=int, default=d.p, help="identities per batch")
    parser.add_argument("--k", type=int, default=d.k, help="images per identity in a batch")
    parser.add_argument("--lr", type=float, default=d.lr, help="Adam peak learning rate")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="warm-up epochs")
    parser.add_argument("--center-weight", type=float, default=d.center_weight,
                        help="centre-loss weight (0 = off)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--torchreid-init", default="", metavar="PTH",
                        help="initialise an OSNet from torchreid weights (fine-tuning)")
    parser.add_argument("--onnx-init", default="", metavar="ONNX",
                        help="initialise `--arch retail` from person-reidentification-retail-0267")
    parser.add_argument("--streams", type=int, choices=(1, 2, 3, 4), default=d.streams,
                        help="`--arch retail`: streams kept in every block")
    parser.add_argument("--plain", action="store_true",
                        help="`--arch retail`: norms as constant affines, every op reidcam's own")


def recipe_from(args) -> Recipe:
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        sys.exit(f"--size: expected HxW such as 128x64, got {args.size!r}")
    return Recipe(arch=args.arch, width=args.width, height_px=h, width_px=w,
                  bnneck=not args.no_bnneck, last_stride=args.last_stride, epochs=args.epochs,
                  p=args.p, k=args.k, lr=args.lr, warmup=args.warmup,
                  center_weight=args.center_weight, seed=args.seed,
                  torchreid_init=args.torchreid_init, onnx_init=args.onnx_init,
                  streams=args.streams, plain=args.plain)
