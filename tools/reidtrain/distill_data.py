"""The crops distillation uses, and the held-out sets it is judged on.

Training: the labelled set (cuhk03-train) and the mined crops of `MINED_TRAIN`. Held out, never
trained on: cuhk03-val (labelled, in domain), and two other domains — the one-by-one video
(indoor, labelled by `tests/fixtures/identities`) and the Market-1501 frames (outdoor campus,
unlabelled) — where the student's agreement with the teacher is measured.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import reference

from .data import Images, load_dir

MINED_TRAIN = ("people-detection",)
# Blends of two labelled crops of different people, as extra unlabelled inputs: the teacher's
# function between the data points ("function matching" with mixup, Beyer et al. 2022).
MIXES = 6000
MINED_HELD_OUT = ("one-by-one", "market-frames")
HEIGHT, WIDTH = 256, 128


def load_mined(directory: Path, names, labelled_only: bool = False) -> Images:
    parts = []
    for name in names:
        path = directory / f"{name}.npz"
        if not path.is_file():
            raise SystemExit(f"{path}: missing; run `python -m reidtrain mine` first")
        with np.load(path) as z:
            keep = z["person"] >= 0 if labelled_only else np.ones(len(z["person"]), bool)
            parts.append(Images(z["pixels"][keep], z["person"][keep],
                                np.zeros(int(keep.sum()), np.int64),
                                [f"{name}:{f}" for f in z["frame"][keep]]))
    return Images(np.concatenate([p.pixels for p in parts]),
                  np.concatenate([p.pids for p in parts]),
                  np.concatenate([p.cams for p in parts]), sum((p.files for p in parts), []))


def mixes(labelled: Images, count: int = MIXES, seed: int = 3) -> np.ndarray:
    """`count` blends λ·a + (1 − λ)·b of two labelled crops of different people, λ in
    [0.35, 0.65], fixed by `seed` ([count, H, W, 3] uint8)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(labelled), count)
    b = rng.integers(0, len(labelled), count)
    same = labelled.pids[a] == labelled.pids[b]
    b[same] = (b[same] + len(labelled) // 2) % len(labelled)
    lam = rng.uniform(0.35, 0.65, count).astype(np.float32)[:, None, None, None]
    out = np.empty((count,) + labelled.pixels.shape[1:], np.uint8)
    for s in range(0, count, 500):
        e = slice(s, s + 500)
        mixed = lam[e] * labelled.pixels[a[e]] + (1 - lam[e]) * labelled.pixels[b[e]]
        out[e] = np.rint(mixed).astype(np.uint8)
    return out


def unlabelled_set(mined: Path, labelled: Images, with_mixes: bool) -> Images:
    """The unlabelled training inputs: the mined crops, then (optionally) the blends."""
    found = load_mined(mined, MINED_TRAIN)
    if not with_mixes:
        return found
    m = mixes(labelled)
    return Images(np.concatenate([found.pixels, m]),
                  np.concatenate([found.pids, np.full(len(m), -1)]),
                  np.concatenate([found.cams, np.zeros(len(m), np.int64)]),
                  found.files + [f"mix:{k}" for k in range(len(m))])


def EVAL_SETS(mined: Path) -> dict[str, Images]:  # noqa: N802 - a table, computed on demand
    val = reference.shared_dir() / "data/cuhk03-val"
    return {
        "cuhk03-val-query": load_dir(val / "query", HEIGHT, WIDTH),
        "cuhk03-val-gallery": load_dir(val / "bounding_box_test", HEIGHT, WIDTH),
        "one-by-one": load_mined(mined, ["one-by-one"], labelled_only=True),
        "market-frames": load_mined(mined, ["market-frames"]),
    }
