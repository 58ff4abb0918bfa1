"""Market-1501-layout datasets, decoded once into memory.

File names are `PPPP_cCsS_FFFFFF_NN.jpg`: PPPP the person id (-1 = junk, 0000 = distractor in
real Market-1501), C the camera. Training skips junk and distractors; evaluation keeps
distractors in the gallery and drops junk, as the Market-1501 protocol does.
"""
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reference import load_rgb

NAME = re.compile(r"^(-?\d+)_c(\d+)")


class DatasetError(Exception):
    pass


@dataclass
class Images:
    """Decoded crops: pixels [N, H, W, 3] uint8 RGB, resized whole (no aspect kept)."""
    pixels: np.ndarray
    pids: np.ndarray      # person id as in the file name
    cams: np.ndarray
    files: list[str]

    def __len__(self) -> int:
        return len(self.files)


def parse_name(path: Path) -> tuple[int, int]:
    m = NAME.match(path.name)
    if not m:
        raise DatasetError(f"{path}: not a Market-1501 file name (expected PPPP_cC..., e.g. "
                           "0001_c1s1_001051_00.jpg)")
    return int(m.group(1)), int(m.group(2))


def list_images(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise DatasetError(f"{directory}: no such directory")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise DatasetError(f"{directory}: no .jpg/.png images")
    return files


def _cache_file(directory: Path, files: list[Path], height: int, width: int) -> Path | None:
    root = os.environ.get("REIDTRAIN_CACHE", str(Path.home() / ".cache/reidcam/reidtrain"))
    if root == "":
        return None
    key = hashlib.sha256()
    for f in files:
        st = f.stat()
        key.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return Path(root) / f"{directory.resolve().name}-{height}x{width}-{key.hexdigest()[:16]}.npy"


def load_dir(directory: Path, height: int, width: int, keep_distractors: bool = True) -> Images:
    """Decodes every image of one Market-layout directory (cached as .npy by content key)."""
    files = list_images(directory)
    meta = [parse_name(f) for f in files]
    keep = [i for i, (pid, _) in enumerate(meta)
            if pid != -1 and (keep_distractors or pid != 0)]
    files = [files[i] for i in keep]
    meta = [meta[i] for i in keep]
    if not files:
        raise DatasetError(f"{directory}: no usable images (all junk or distractors)")
    cache = _cache_file(directory, files, height, width)
    if cache is not None and cache.is_file():
        pixels = np.load(cache)
    else:
        pixels = np.stack([load_rgb(f, width, height) for f in files])
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npy")
            np.save(tmp, pixels)
            tmp.replace(cache)
    return Images(pixels, np.array([m[0] for m in meta]), np.array([m[1] for m in meta]),
                  [f.name for f in files])


def train_dir(root: Path) -> Path:
    """`root` itself, or its `bounding_box_train/`."""
    sub = root / "bounding_box_train"
    return sub if sub.is_dir() else root
