#!/usr/bin/env python3
"""The default person detector through `reidcam detect` against the reference, on the 16 shared
Market-1501 frames: the people that Megvii's YOLOX-Nano (`yolox_nano_dynhw.onnx` at 736×416,
score ≥ 0.5, onnxruntime, `yolox_ref.py`) finds, and how many of them reidcam's detector finds
(a box of IoU ≥ 0.5), plus what reidcam finds that the reference does not.

    tools/.venv/bin/python tools/detector_check.py [--detector D.onnx] [--size WxH]
        [--draw DIR] [--check 0.95]

`--draw DIR` writes each frame with the reference's boxes (green) and reidcam's (red) to look at
(under the build directory: the frames show real people and stay out of the repository).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import reference
from yolox_ref import DetectorSpec, YoloxDetector, iou


def reidcam_boxes(frames: Path, detector: str | None, size: str | None) -> tuple[dict, str]:
    cmd = [str(reference.reidcam_binary()), "detect", str(frames)]
    if detector:
        cmd += ["--detector", detector]
    if size:
        cmd += ["--size", size]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"reidcam detect: {run.stderr.strip()}")
    out = {}
    for line in run.stdout.splitlines():
        r = json.loads(line)
        b = np.array([[x, y, x + w, y + h, s] for x, y, w, h, s in r["boxes"]], np.float64)
        out[Path(r["file"]).name] = b.reshape(-1, 5)
    return out, run.stderr.strip()


def match(ref: np.ndarray, got: np.ndarray, min_iou: float = 0.5) -> tuple[int, list[int]]:
    """Reference boxes found (greedy, best IoU first), and the indices of unmatched `got` boxes."""
    pairs = sorted(((iou(r[:4], got[[j], :4])[0], i, j) for i, r in enumerate(ref)
                    for j in range(len(got))), reverse=True)
    used_r, used_g = set(), set()
    for o, i, j in pairs:
        if o >= min_iou and i not in used_r and j not in used_g:
            used_r.add(i)
            used_g.add(j)
    return len(used_r), [j for j in range(len(got)) if j not in used_g]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", help="detector for reidcam (default: its default)")
    ap.add_argument("--size", help="reidcam's network input WxH (default: the manifest's)")
    ap.add_argument("--draw", type=Path, help="write the frames with both sets of boxes here")
    ap.add_argument("--check", type=float, metavar="RECALL",
                    help="exit 1 if reidcam finds less than this share of the reference's people")
    args = ap.parse_args()
    shared = reference.require_shared("detector_check")
    if shared is None:
        return 0
    frames = shared / "data/market1501-frames/frames"
    ref_det = YoloxDetector(shared / "models/yolox_nano_dynhw.onnx", DetectorSpec(width=736, height=416))
    got, log = reidcam_boxes(frames, args.detector, args.size)
    print(log)
    total = found = extra = 0
    if args.draw:
        args.draw.mkdir(parents=True, exist_ok=True)
    for f in sorted(frames.glob("*.jpg")):
        rgb = np.asarray(Image.open(f).convert("RGB"))
        rb, _ = ref_det(rgb, score=0.5)
        g = got.get(f.name, np.zeros((0, 5)))
        n, unmatched = match(rb, g)
        total, found, extra = total + len(rb), found + n, extra + len(unmatched)
        print(f"{f.name}: reference {len(rb)}, reidcam {len(g)}, found {n}, "
              f"reidcam only {len(unmatched)}")
        if args.draw:
            im = Image.fromarray(rgb)
            d = ImageDraw.Draw(im)
            for b in rb:
                d.rectangle(list(b[:4]), outline=(0, 255, 0), width=5)
            for j, b in enumerate(g):
                d.rectangle(list(b[:4]), outline=(255, 0, 0), width=2 if j not in unmatched else 6)
            im.resize((960, 540)).save(args.draw / f.name)
    recall = found / max(total, 1)
    print(f"reference people {total}, found by reidcam {found} ({100 * recall:.1f}%), "
          f"reidcam boxes without a reference box {extra}")
    if args.check is not None and recall < args.check:
        print(f"detector check FAILED: recall {recall:.3f} < {args.check}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
