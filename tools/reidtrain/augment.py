"""Batch augmentation on uint8 tensors: horizontal flip, pad + random crop, random erasing."""
import math

import torch

from reference import IMAGENET_MEAN, IMAGENET_STD


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """[N,H,W,3] uint8 → [N,3,H,W] float, /255 then ImageNet mean/std (the reference pipeline)."""
    x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class Augment:
    """Bag-of-tricks augmentation scaled to the input size (pad 10 px at 256×128)."""

    def __init__(self, height: int, flip: float = 0.5, pad: int | None = None,
                 erase: float = 0.5, generator: torch.Generator | None = None):
        self.flip, self.erase = flip, erase
        self.pad = round(10 * height / 256) if pad is None else pad
        self.g = generator

    def _rand(self, *shape) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = normalise(pixels)
        n, _, h, w = x.shape
        flip = self._rand(n) < self.flip
        x[flip] = x[flip].flip(3)
        if self.pad:
            p = self.pad
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            oy = (self._rand(n) * (2 * p + 1)).long()
            ox = (self._rand(n) * (2 * p + 1)).long()
            x = torch.stack([padded[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w] for i in range(n)])
        if self.erase:
            for i in range(n):
                if self._rand(1).item() < self.erase:
                    self._erase(x[i], h, w)
        return x

    def _erase(self, img: torch.Tensor, h: int, w: int) -> None:
        """Random erasing (Zhong et al.): area 2–40 %, aspect 0.3–3.3, filled with noise."""
        for _ in range(10):
            area = h * w * (0.02 + 0.38 * self._rand(1).item())
            aspect = math.exp(math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * self._rand(1).item())
            eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < eh < h and 0 < ew < w:
                y = int(self._rand(1).item() * (h - eh))
                x = int(self._rand(1).item() * (w - ew))
                img[:, y:y + eh, x:x + ew] = torch.randn(3, eh, ew, generator=self.g)
                return
