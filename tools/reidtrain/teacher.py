"""`python -m reidtrain teach`: a teacher model's embeddings of every training view, once.

The teacher (an ONNX ReID model with a 256×128 RGB ImageNet-normalised input, e.g. the shared
`person-reidentification-retail-0267.onnx`, Apache-2.0) embeds views 0…V−1 (`views.py`) of every
training crop — the labelled set and the mined, unlabelled crops — and the clean crops of the
held-out sets used to measure agreement out of domain. Embeddings are L2-normalised and stored as
float16 in one `.npz`; two worker processes share the cores.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import torch

import reference

from . import views as views_mod
from .data import load_dir, train_dir
from .distill_data import EVAL_SETS, unlabelled_set

HEIGHT, WIDTH = 256, 128
_session = None
_sets: dict[str, np.ndarray] = {}


def _init(model: str, data: str, mined: str, mixes: bool) -> None:
    """Worker set-up: the teacher and every image set (so jobs carry only indices)."""
    global _session
    torch.set_num_threads(1)
    _session = reference.session(Path(model), threads=1)
    _sets.update(image_sets(Path(data), Path(mined), mixes))


def image_sets(data: Path, mined: Path, mixes: bool) -> dict[str, np.ndarray]:
    """Every set the teacher embeds, as [N, 256, 128, 3] uint8."""
    labelled = load_dir(train_dir(data), HEIGHT, WIDTH, keep_distractors=False)
    sets = {"labelled": labelled.pixels,
            "mined": unlabelled_set(mined, labelled, mixes).pixels}
    sets.update({f"eval:{k}": v.pixels for k, v in EVAL_SETS(mined).items()})
    return sets


def _embed(job: tuple[str, int, int, int, int]) -> np.ndarray:
    name, start, end, view, seed = job
    x = views_mod.render(torch.from_numpy(_sets[name][start:end]),
                         [views_mod.params(seed, i, view) for i in range(start, end)])
    return reference.run_tensors(_session, x.numpy()).astype(np.float16)


def embed_views(pool, name: str, count: int, n_views: int, seed: int,
                chunk: int = 64) -> np.ndarray:
    """Set `name` → [N, V, D] float16, view v of image i as `views.params(seed, i, v)`."""
    jobs = [(name, s, min(s + chunk, count), v, seed)
            for v in range(n_views) for s in range(0, count, chunk)]
    out = pool.map(_embed, jobs, chunksize=1)
    per_view = len(out) // n_views
    return np.stack([np.concatenate(out[v * per_view:(v + 1) * per_view])
                     for v in range(n_views)], 1)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", type=Path, help="teacher ONNX (default: the shared "
                   "person-reidentification-retail-0267.onnx)")
    p.add_argument("--data", type=Path, help="labelled Market-layout training set (default: the "
                   "shared cuhk03-train)")
    p.add_argument("--mined", type=Path, default=Path.home() / ".cache/reidcam/reidtrain/mined",
                   help="`reidtrain mine` output")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mixes", action="store_true",
                   help="also blends of two labelled crops as unlabelled inputs (distill_data)")
    p.add_argument("--out", type=Path, required=True, help=".npz to write")


def run(args) -> None:
    shared = reference.shared_dir()
    teacher = args.teacher or shared / "models/person-reidentification-retail-0267.onnx"
    data = args.data or shared / "data/cuhk03-train"
    labelled = load_dir(train_dir(data), HEIGHT, WIDTH, keep_distractors=False)
    counts = {k: len(v) for k, v in image_sets(data, args.mined, args.mixes).items()}
    started = time.time()
    out = {"teacher": np.array(teacher.name), "views": np.array(args.views),
           "seed": np.array(args.seed), "files": np.array(labelled.files),
           "mixes": np.array(args.mixes)}
    init = (str(teacher), str(data), str(args.mined), args.mixes)
    with mp.get_context("spawn").Pool(2, _init, init) as pool:
        out["labelled"] = embed_views(pool, "labelled", counts["labelled"], args.views, args.seed)
        # the mined crops have view parameters of their own (seed + 1)
        out["mined"] = embed_views(pool, "mined", counts["mined"], args.views, args.seed + 1)
        for name in counts:
            if name.startswith("eval:"):
                out[name] = embed_views(pool, name, counts[name], 1, args.seed)[:, 0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **out)
    print(f"{teacher.name}: {counts['labelled']} labelled and {counts['mined']} unlabelled crops × "
          f"{args.views} views in {time.time() - started:.0f} s → {args.out}")
