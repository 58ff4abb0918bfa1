"""Fixtures for the model-tool tests: a tiny synthetic Market-layout dataset, no cache."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TOOLS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOOLS))
os.environ["REIDTRAIN_CACHE"] = ""  # tests decode their own files every time

import torch  # noqa: E402

torch.set_num_threads(2)


def write_market_dir(directory: Path, ids: int, per_id: int, seed: int = 0,
                     size: tuple[int, int] = (32, 64), cams: int = 2) -> Path:
    """Images whose colour pattern depends on the identity (learnable), in Market file names."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    w, h = size
    for pid in range(1, ids + 1):
        base = rng.integers(0, 256, (2, 3))
        for k in range(per_id):
            img = np.empty((h, w, 3), np.uint8)
            img[: h // 2] = base[0]
            img[h // 2:] = base[1]
            noisy = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            cam = 1 + k % cams
            Image.fromarray(noisy).save(directory / f"{pid:04d}_c{cam}s1_{k:06d}_00.jpg")
    return directory


@pytest.fixture
def tiny_train(tmp_path) -> Path:
    return write_market_dir(tmp_path / "data" / "bounding_box_train", ids=8, per_id=4).parent
