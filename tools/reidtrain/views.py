"""Deterministic augmented views for distillation: the teacher and the student see the same view.

View `v` of image `i` is fixed by `(seed, i, v)`: view 0 is the crop as it is, view 1 its mirror
image, views 2… random — a loose or tight detector box (crop and scale, with mirror), colour
(brightness, contrast, saturation, sometimes grey), low resolution (down and up again: small or
blurred people) and an occluder (random erasing). `reidtrain teach` runs the teacher once on
every view at 256×128 and stores its embeddings; training renders the same views again (same
pixels) and resizes them to the student's input, so "consistent teaching" (Beyer et al., 2022)
costs the teacher nothing per epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .augment import normalise


@dataclass
class ViewParams:
    flip: bool = False
    # crop box in units of the image: centre offset and size (1 = the whole image)
    cx: float = 0.0
    cy: float = 0.0
    sw: float = 1.0
    sh: float = 1.0
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    grey: bool = False
    lowres: float = 1.0     # < 1: down to this fraction of the size, then back up
    erase: tuple[float, float, float, float] | None = None  # y, x, h, w (fractions)
    noise_seed: int = 0


def params(seed: int, image: int, view: int) -> ViewParams:
    if view == 0:
        return ViewParams()
    if view == 1:
        return ViewParams(flip=True)
    rng = np.random.default_rng([seed, image, view])
    p = ViewParams(flip=bool(rng.random() < 0.5))
    # detector boxes: 85–110 % of the height, 80–115 % of the width, shifted by up to 6 %
    p.sh, p.sw = float(rng.uniform(0.85, 1.10)), float(rng.uniform(0.80, 1.15))
    p.cx, p.cy = float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.05, 0.05))
    if rng.random() < 0.8:
        p.brightness = float(rng.uniform(0.7, 1.3))
        p.contrast = float(rng.uniform(0.7, 1.3))
        p.saturation = float(rng.uniform(0.6, 1.4))
    p.grey = bool(rng.random() < 0.05)
    if rng.random() < 0.3:
        p.lowres = float(rng.uniform(0.3, 0.8))
    if rng.random() < 0.4:
        area = rng.uniform(0.02, 0.25)
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        eh, ew = min(math.sqrt(area * aspect), 0.9), min(math.sqrt(area / aspect), 0.9)
        p.erase = (float(rng.uniform(0, 1 - eh)), float(rng.uniform(0, 1 - ew)), eh, ew)
    p.noise_seed = int(rng.integers(1 << 31))
    return p


def render(pixels: torch.Tensor, views: list[ViewParams]) -> torch.Tensor:
    """[N,H,W,3] uint8 and one view each → [N,3,H,W] normalised float (ImageNet mean/std)."""
    n, h, w, _ = pixels.shape
    x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    theta = torch.zeros(n, 2, 3)
    for i, p in enumerate(views):
        theta[i, 0, 0] = -p.sw if p.flip else p.sw
        theta[i, 1, 1] = p.sh
        theta[i, 0, 2] = 2 * p.cx
        theta[i, 1, 2] = 2 * p.cy
    if any(p.sw != 1 or p.sh != 1 or p.cx or p.cy for p in views):
        grid = F.affine_grid(theta, (n, 3, h, w), align_corners=False)
        # outside the crop: the mean colour of the image, as a loose box over a plain background
        fill = x.mean((2, 3), keepdim=True)
        x = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False) + fill
    else:
        flip = torch.tensor([p.flip for p in views])
        x[flip] = x[flip].flip(3)
    for i, p in enumerate(views):
        img = x[i]
        if p.brightness != 1:
            img.mul_(p.brightness)
        if p.contrast != 1:
            mean = img.mean()
            img.sub_(mean).mul_(p.contrast).add_(mean)
        grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).unsqueeze(0)
        if p.grey:
            img.copy_(grey.expand(3, -1, -1))
        elif p.saturation != 1:
            img.sub_(grey).mul_(p.saturation).add_(grey)
        img.clamp_(0, 1)
        if p.lowres < 1:
            small = (max(8, round(h * p.lowres)), max(4, round(w * p.lowres)))
            down = F.interpolate(img[None], size=small, mode="bilinear", antialias=True,
                                 align_corners=False)
            img.copy_(F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)[0])
        if p.erase:
            y0, x0 = round(p.erase[0] * h), round(p.erase[1] * w)
            eh, ew = max(1, round(p.erase[2] * h)), max(1, round(p.erase[3] * w))
            g = torch.Generator().manual_seed(p.noise_seed)
            img[:, y0:y0 + eh, x0:x0 + ew] = torch.rand(3, eh, ew, generator=g)
    x = (x * 255).round_().clamp_(0, 255).to(torch.uint8)
    return normalise(x.permute(0, 2, 3, 1))


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A rendered batch at the student's input size (bilinear with antialiasing, as Pillow)."""
    if x.shape[2:] == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True,
                         align_corners=False)
