#!/usr/bin/env python3
"""Make reidcam's default person detector, `models/detector.onnx`, from YOLOX-Nano.

    tools/.venv/bin/python tools/make_detector.py [--source ../shared/models/yolox_nano_dynhw.onnx]

Megvii's YOLOX-Nano (COCO, Apache-2.0; the shared `yolox_nano_dynhw.onnx`, free H×W) is cut
down to the one class a camera that re-identifies people needs: each level's 80-channel class
convolution keeps the person filter only, so the head's rows shrink from 85 values to 6
(`tx, ty, tw, th, objectness, person`) and the class branch does 1/80 of its last layer's work.
Everything else — weights, the backbone, the free input size — is unchanged, so the person
scores are the original model's: the script checks that on the 16 shared Market frames (same
boxes after NMS, raw outputs within 1e-5) and writes the manifest `models/detector.toml`.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from PIL import Image

import reference
from yolox_ref import DetectorSpec, YoloxDetector, decode

ROOT = Path(__file__).resolve().parent.parent
PERSON = 0  # COCO's class 0


def person_only(model: onnx.ModelProto) -> int:
    """Keeps output channel PERSON of every class-prediction convolution; returns how many."""
    inits = {i.name: i for i in model.graph.initializer}
    cut = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or "cls_preds" not in node.name:
            continue
        for name in node.input[1:]:
            a = numpy_helper.to_array(inits[name])
            if a.shape[0] != 80:
                raise SystemExit(f"{node.name}: {name} has {a.shape[0]} outputs, expected 80 "
                                 "COCO classes")
            inits[name].CopyFrom(numpy_helper.from_array(a[PERSON:PERSON + 1].copy(), name))
        cut += 1
    if cut != 3:
        raise SystemExit(f"found {cut} class-prediction convolutions, expected 3 (one per level)")
    out = model.graph.output[0].type.tensor_type.shape.dim
    out[2].ClearField("dim_param")
    out[2].dim_value = 6
    model.graph.ClearField("value_info")  # shapes are re-derived by every runtime
    return cut


def manifest(source: Path, digest: str, width: int, height: int) -> str:
    return f'''# reidcam person detector: YOLOX-Nano (Megvii, COCO, Apache-2.0) cut to the person class by
# tools/make_detector.py. Model card: models/README.md.
[model]
name = "yolox-nano-person"
version = "yolox_nano_dynhw.onnx (sha256 {digest[:16]}), person class only"

[input]
name = "images"
width = {width}                 # default network input; the model takes any multiple of 32
height = {height}
channel_order = "bgr"
pixel_divisor = 1.0         # raw 0-255
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]
letterbox = "top-left"      # resize keeping the aspect ratio, image at the top left
pad = 114

[output]
name = "output"
layout = "yolox"            # [1, rows, 4 + 1 + classes]: tx, ty, tw, th, objectness, class scores
strides = [8, 16, 32]       # rows: grid cells of each stride, level -> y -> x
classes = 1                 # sigmoid already applied to objectness and classes
person_class = 0
'''


def check(original: Path, cut: Path, frames: list[Path], spec: DetectorSpec) -> tuple[float, int]:
    """Largest |person score difference| and boxes compared, original vs cut, on `frames`."""
    a, b = YoloxDetector(original, spec), YoloxDetector(cut, spec)
    worst, boxes = 0.0, 0
    for f in frames:
        rgb = np.asarray(Image.open(f).convert("RGB"))
        ra, ratio = a.raw(rgb)
        rb, _ = b.raw(rgb)
        worst = max(worst, float(np.abs(ra[:, [0, 1, 2, 3, 4, 5 + PERSON]] - rb).max()))
        ba, sa = decode(ra, spec.width, spec.height, ratio, rgb.shape[1], rgb.shape[0])
        bb, sb = decode(rb, spec.width, spec.height, ratio, rgb.shape[1], rgb.shape[0])
        if len(ba) != len(bb) or np.abs(ba - bb).max(initial=0) > 0.01:
            raise SystemExit(f"{f.name}: the cut model finds other boxes ({len(bb)} vs {len(ba)})")
        boxes += len(ba)
    return worst, boxes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, help="YOLOX-Nano ONNX with free H×W (default: the "
                    "shared yolox_nano_dynhw.onnx)")
    ap.add_argument("--out", type=Path, default=ROOT / "models/detector.onnx")
    ap.add_argument("--width", type=int, default=736)
    ap.add_argument("--height", type=int, default=416)
    args = ap.parse_args()
    shared = reference.require_shared("make_detector")
    if shared is None:
        return 0
    source = args.source or shared / "models/yolox_nano_dynhw.onnx"
    model = onnx.load(str(source))
    person_only(model)
    onnx.checker.check_model(model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(args.out))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    args.out.with_suffix(".toml").write_text(manifest(source, digest, args.width, args.height))
    spec = DetectorSpec(width=args.width, height=args.height)
    frames = sorted((shared / "data/market1501-frames/frames").glob("*.jpg"))
    worst, boxes = check(source, args.out, frames, spec)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) + manifest; on "
          f"{len(frames)} Market frames at {args.width}x{args.height}: {boxes} people, the same "
          f"boxes as {source.name}, person outputs within {worst:.1e}")
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
