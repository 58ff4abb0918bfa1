"""`python -m reidtrain mine`: person crops from the shared videos and Market frames, for
distillation (unlabelled) and for out-of-domain checks (labelled by `tests/fixtures/identities`).

The shared YOLOX-Nano (`yolox_nano_dynhw.onnx`, 736×416) finds the people; a crop is kept when
it is a good ReID crop — score ≥ 0.5, at least 80 px tall, not cut by the frame edge (a 2 px
margin) — and resized whole to the teacher's 256×128 (Pillow BILINEAR, as `reference.load_rgb`).
Each source becomes one `.npz` in `--out`: `pixels` [N,256,128,3] uint8, `frame`, `box`
(x0, y0, x1, y1), `score`, and `person` (the labelled person whose box the crop overlaps by
IoU ≥ 0.5, else -1) where the source has labels. A labelled source's crops are also written, as
cut from the frame (JPEG), into a Market-1501-layout directory `<name>-market/`: each person's
earlier half of crops in `query/` as camera 1, the later half in `bounding_box_test/` as camera 2
— so `reidcam eval` and `reidcam calibrate` measure a model on that domain through the
firmware's own path ("cross-camera" pairs are then the same person minutes apart).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import reference
from identity_labels import LABELS, Labels
from yolox_ref import YoloxDetector, video_frames

HEIGHT, WIDTH = 256, 128

# name → (path under ../shared, frame step, labels file or None)
SOURCES = {
    "people-detection": ("data/video/people-detection.264", 2, "people-detection.toml"),
    "one-by-one": ("data/video/one-by-one-person-detection.mp4", 3,
                   "one-by-one-person-detection.toml"),
    "market-frames": ("data/market1501-frames/frames", 1, None),
}


def good_crop(box: np.ndarray, score: float, w: int, h: int, min_score: float = 0.5,
              min_height: float = 80, margin: float = 2) -> bool:
    x0, y0, x1, y1 = box
    return (score >= min_score and y1 - y0 >= min_height and x0 >= margin and y0 >= margin
            and x1 <= w - margin and y1 <= h - margin)


def frames_of(path: Path, step: int):
    if path.is_dir():
        for i, f in enumerate(sorted(path.glob("*.jpg"))):
            with Image.open(f) as img:
                yield i, np.asarray(img.convert("RGB"))
    else:
        yield from video_frames(path, step)


def mine(name: str, shared: Path, detector: YoloxDetector, out: Path) -> Path:
    rel, step, labels_file = SOURCES[name]
    labels = Labels(LABELS / labels_file) if labels_file else None
    pixels, frames, boxes, scores, people, originals = [], [], [], [], [], []
    for i, rgb in frames_of(shared / rel, step):
        h, w = rgb.shape[:2]
        found, sc = detector(rgb)
        for box, s in zip(found, sc):
            if not good_crop(box, float(s), w, h):
                continue
            crop = Image.fromarray(rgb).crop(tuple(int(round(v)) for v in box))
            pixels.append(np.asarray(crop.resize((WIDTH, HEIGHT), Image.BILINEAR)))
            originals.append(crop)
            frames.append(i)
            boxes.append(box)
            scores.append(s)
            people.append(labels.person_of(i, box) if labels else -1)
    path = out / f"{name}.npz"
    out.mkdir(parents=True, exist_ok=True)
    np.savez(path, pixels=np.stack(pixels), frame=np.array(frames), box=np.array(boxes),
             score=np.array(scores), person=np.array(people))
    if labels:
        write_market(out / f"{name}-market", originals, frames, people)
    labelled = sum(p >= 0 for p in people)
    print(f"{name}: {len(pixels)} crops" + (f", {labelled} of labelled people" if labels else ""),
          flush=True)
    return path


def write_market(root: Path, crops: list, frames: list[int], people: list[int]) -> None:
    """Labelled crops as a Market-1501-layout set, split in time per person (see above)."""
    for sub in ("query", "bounding_box_test"):
        d = root / sub
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.jpg"):
            old.unlink()
    for pid in sorted(set(p for p in people if p >= 0)):
        mine = sorted((f, i) for i, (f, p) in enumerate(zip(frames, people)) if p == pid)
        half = len(mine) // 2
        for k, (f, i) in enumerate(mine):
            sub, cam = ("query", 1) if k < half else ("bounding_box_test", 2)
            crops[i].save(root / sub / f"{pid:04d}_c{cam}s1_{f:06d}_00.jpg", quality=95)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path.home() / ".cache/reidcam/reidtrain/mined")
    p.add_argument("--detector", type=Path, help="YOLOX ONNX (default: the shared "
                   "yolox_nano_dynhw.onnx)")
    p.add_argument("--source", choices=sorted(SOURCES), action="append",
                   help="mine only these (default: all)")


def run(args) -> None:
    shared = reference.shared_dir()
    detector = YoloxDetector(args.detector or shared / "models/yolox_nano_dynhw.onnx", threads=2)
    for name in args.source or sorted(SOURCES):
        mine(name, shared, detector, args.out)
