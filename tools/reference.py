"""Reference pipeline: Pillow decode + BILINEAR resize + normalise, onnxruntime inference.

This is the pipeline the models were evaluated with (see ../shared/README.md, "Reference
accuracy"); reidcam's Rust path is checked against it. Used by reference_embed.py,
make_fixtures.py and parity.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# The four reference ReID models of ../shared/models with the onnxruntime + Pillow accuracy that
# ../shared/README.md reports on cuhk03-val: (rank-1, mAP).
REFERENCE_MODELS = {
    "osnet_x0_25_msmt17": (41.46, 40.97),
    "osnet_x0_25_msmt17_boxmot": (53.22, 52.31),
    "osnet_x0_25_market1501": (21.29, 21.98),
    "person-reidentification-retail-0267": (74.28, 71.93),
}


def require_shared(tool: str) -> Path | None:
    """../shared if present; otherwise exit 2 under CI, or return None (skip) with a message."""
    shared = shared_dir()
    if (shared / "models").is_dir():
        return shared
    msg = f"shared data not found at {shared} (set REIDCAM_SHARED)"
    if os.environ.get("CI"):
        print(f"{tool}: FAILED: {msg}", file=sys.stderr)
        sys.exit(2)
    print(f"{tool}: SKIPPED: {msg}")
    return None


def reidcam_binary() -> Path:
    """The release `reidcam` binary of this checkout ($CARGO_TARGET_DIR or target/)."""
    root = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("CARGO_TARGET_DIR", root / "target")) / "release" / "reidcam"


def shared_dir() -> Path:
    """../shared (or $REIDCAM_SHARED), resolved from the repository root."""
    root = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("REIDCAM_SHARED", root.parent / "shared")).resolve()


@dataclass
class InputSpec:
    name: str | None = None
    height: int = 256
    width: int = 128
    channel_order: str = "rgb"
    pixel_divisor: float = 255.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_manifest(cls, path: Path | None) -> "InputSpec":
        if path is None:
            return cls()
        with open(path, "rb") as f:
            m = tomllib.load(f)["input"]
        return cls(
            name=m["name"],
            height=m["height"],
            width=m["width"],
            channel_order=m.get("channel_order", "rgb"),
            pixel_divisor=m.get("pixel_divisor", 255.0),
            mean=tuple(m.get("mean", IMAGENET_MEAN)),
            std=tuple(m.get("std", IMAGENET_STD)),
        )


def load_rgb(path: Path, width: int, height: int) -> np.ndarray:
    """The reference resize: Pillow BILINEAR of the whole crop → [H, W, 3] uint8 RGB."""
    with Image.open(path) as img:
        return np.array(img.convert("RGB").resize((width, height), Image.BILINEAR))


def preprocess(path: Path, spec: InputSpec) -> np.ndarray:
    """One crop → [3, H, W] float32, exactly as the reference pipeline does it."""
    x = load_rgb(path, spec.width, spec.height).astype(np.float32) / np.float32(spec.pixel_divisor)
    if spec.channel_order == "bgr":
        x = x[:, :, ::-1]
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def reidcam_eval(model: Path, data: Path, manifest: Path | None = None, batch: int = 1,
                 identities: bool = False) -> dict:
    """`reidcam eval --json` of this checkout's release binary; a failure raises with its stderr."""
    binary = reidcam_binary()
    if not binary.is_file():
        raise RuntimeError(f"{binary}: build reidcam first (cargo build --release)")
    cmd = [str(binary), "eval", "--model", str(model), "--data", str(data), "--json",
           "--batch", str(batch)]
    if identities:
        cmd += ["--identities"]
    if manifest:
        cmd += ["--manifest", str(manifest)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"reidcam eval {model}: {run.stderr.strip()}")
    return json.loads(run.stdout)


def session(model: Path | bytes, threads: int = 1):
    """An onnxruntime CPU session of a model file (or serialised model)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: torchreid exports carry unused initializers
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run_tensors(sess, tensors: np.ndarray, input_name: str | None = None) -> np.ndarray:
    """[N, 3, H, W] → L2-normalised [N, D], one crop at a time (some models have batch 1)."""
    name = input_name or sess.get_inputs()[0].name
    out = [sess.run(None, {name: t[None]})[0].reshape(-1) for t in tensors]
    emb = np.stack(out).astype(np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norms > 0, norms, 1)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def parity_crops(step: int = 8) -> list[Path]:
    """Every `step`-th crop of cuhk03-val (query then gallery, sorted): 118 crops for step 8."""
    val = shared_dir() / "data" / "cuhk03-val"
    files = sorted((val / "query").glob("*.jpg")) + sorted((val / "bounding_box_test").glob("*.jpg"))
    return files[::step]
