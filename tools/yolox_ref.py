"""Reference YOLOX person detection in Python (onnxruntime), as `reidcam`'s `detect::yolox` does it.

Letterbox (resize keeping the aspect ratio, top-left, pad 114), the model, YOLOX head decoding of
`[1, N, 5 + classes]` rows (grid cells of strides 8/16/32, level → y → x), score = objectness ×
class, greedy NMS (IoU 0.45). Used to mine person crops from the shared videos and frames
(`reidtrain mine`), to propose boxes for the identity labels, and to compare the default detector
with the shared YOLOX-Nano on the Market frames (`tools/detector_check.py`).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

STRIDES = (8, 16, 32)


@dataclass
class DetectorSpec:
    """What a YOLOX-family export expects and gives (the detector manifest, see models/README)."""
    input_name: str = "images"
    width: int = 736
    height: int = 416
    channel_order: str = "bgr"
    pixel_divisor: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pad: int = 114
    person_class: int = 0

    @classmethod
    def from_manifest(cls, path: Path) -> "DetectorSpec":
        with open(path, "rb") as f:
            m = tomllib.load(f)
        i, o = m["input"], m["output"]
        return cls(input_name=i["name"], width=i["width"], height=i["height"],
                   channel_order=i.get("channel_order", "bgr"),
                   pixel_divisor=i.get("pixel_divisor", 1.0), mean=tuple(i.get("mean", (0, 0, 0))),
                   std=tuple(i.get("std", (1, 1, 1))), pad=i.get("pad", 114),
                   person_class=o.get("person_class", 0))


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box [x0, y0, x1, y1] against rows of boxes."""
    x0 = np.maximum(a[0], b[:, 0])
    y0 = np.maximum(a[1], b[:, 1])
    x1 = np.minimum(a[2], b[:, 2])
    y1 = np.minimum(a[3], b[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = 0.45) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[[k]])[0] <= threshold for k in keep):
            keep.append(int(i))
    return np.array(keep, dtype=np.int64)


class YoloxDetector:
    def __init__(self, model: Path, spec: DetectorSpec | None = None, threads: int = 1):
        import reference

        self.spec = spec or DetectorSpec()
        self.sess = reference.session(model, threads)

    def letterbox(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        s = self.spec
        h, w = rgb.shape[:2]
        ratio = min(s.width / w, s.height / h)
        sw, sh = max(1, min(s.width, round(w * ratio))), max(1, min(s.height, round(h * ratio)))
        resized = np.asarray(Image.fromarray(rgb).resize((sw, sh), Image.BILINEAR), np.float32)
        canvas = np.full((s.height, s.width, 3), float(s.pad), np.float32)
        canvas[:sh, :sw] = resized
        if s.channel_order == "bgr":
            canvas = canvas[:, :, ::-1]
        x = (canvas / s.pixel_divisor - np.asarray(s.mean, np.float32)) / np.asarray(s.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32), ratio

    def raw(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        x, ratio = self.letterbox(rgb)
        return self.sess.run(None, {self.spec.input_name: x})[0][0], ratio

    def __call__(self, rgb: np.ndarray, score: float = 0.5, nms_iou: float = 0.45,
                 min_height: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """People in an RGB frame: boxes [K, 4] (x0, y0, x1, y1, frame pixels, clipped), scores."""
        out, ratio = self.raw(rgb)
        return decode(out, self.spec.width, self.spec.height, ratio, rgb.shape[1], rgb.shape[0],
                      self.spec.person_class, score, nms_iou, min_height)


def decode(out: np.ndarray, net_w: int, net_h: int, ratio: float, frame_w: int, frame_h: int,
           person_class: int = 0, score: float = 0.5, nms_iou: float = 0.45,
           min_height: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    grids, strides = [], []
    for s in STRIDES:
        gy, gx = np.mgrid[0:net_h // s, 0:net_w // s]
        grids.append(np.stack([gx.ravel(), gy.ravel()], 1))
        strides.append(np.full(gx.size, s))
    grid = np.concatenate(grids).astype(np.float32)
    stride = np.concatenate(strides).astype(np.float32)[:, None]
    if len(grid) != len(out):
        raise ValueError(f"{len(out)} output rows, a {net_w}x{net_h} YOLOX head has {len(grid)}")
    scores = out[:, 4] * out[:, 5 + person_class]
    keep = scores >= score
    centre = (out[keep, :2] + grid[keep]) * stride[keep]
    size = np.exp(out[keep, 2:4]) * stride[keep]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1) / ratio
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, frame_w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, frame_h)
    scores = scores[keep]
    tall = (boxes[:, 3] - boxes[:, 1]) >= max(min_height, 1e-6)
    boxes, scores = boxes[tall], scores[tall]
    k = nms(boxes, scores, nms_iou)
    if len(k) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    return boxes[k], scores[k]


def video_frames(path: Path, step: int = 1):
    """(index, RGB array) of every `step`-th frame of a video file (PyAV: MP4 or Annex B H.264)."""
    import av

    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % step == 0:
                yield i, frame.to_ndarray(format="rgb24")
