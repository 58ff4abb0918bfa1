"""The labelled people of the shared videos (`tests/fixtures/identities/<video>.toml`): per person,
keyframe boxes `[frame, x0, y0, x1, y1]`, linear in between. Used by `reidtrain mine` and
`identity_eval.py`."""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np

from yolox_ref import iou

LABELS = Path(__file__).resolve().parent.parent / "tests/fixtures/identities"


class Labels:
    """The people of one labelled video: per person, keyframe boxes, linear in between."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            data = tomllib.load(f)
        self.video = data["video"]
        self.frames = data["frames"]
        self.people: dict[int, np.ndarray] = {}
        self.descriptions: dict[int, str] = {}
        for p in data["person"]:
            boxes = np.asarray(p["boxes"], np.float64)
            if boxes.ndim != 2 or boxes.shape[1] != 5 or np.any(np.diff(boxes[:, 0]) <= 0):
                raise ValueError(f"{path}: person {p['id']}: boxes must be rows of [frame, x0, "
                                 "y0, x1, y1] in increasing frame order")
            self.people[int(p["id"])] = boxes
            self.descriptions[int(p["id"])] = p.get("description", "")

    def boxes_at(self, frame: int) -> dict[int, np.ndarray]:
        """Every labelled person in `frame` with their (interpolated) box."""
        out = {}
        for pid, kf in self.people.items():
            f = kf[:, 0]
            if f[0] <= frame <= f[-1]:
                out[pid] = np.array([np.interp(frame, f, kf[:, c]) for c in range(1, 5)])
        return out

    def person_of(self, frame: int, box: np.ndarray, min_iou: float = 0.5) -> int:
        best, best_iou = -1, min_iou
        for pid, b in self.boxes_at(frame).items():
            o = float(iou(b, box[None])[0])
            if o >= best_iou:
                best, best_iou = pid, o
        return best
