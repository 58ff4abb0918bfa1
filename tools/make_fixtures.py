#!/usr/bin/env python3
"""Regenerate reidcam's test fixtures from the reference pipeline.

    tools/.venv/bin/python tools/make_fixtures.py [resize] [parity]

resize: Pillow BILINEAR resizes of a synthetic pattern (defined identically in
        tests/common/mod.rs) → tests/fixtures/resize/<case>/{case.json, expected.png}.
models: tiny ONNX models of our own for error-path and engine tests (no shared data needed) →
        tests/fixtures/models/, plus the onnxruntime embedding of one synthetic crop through
        tiny_reid.onnx → tests/fixtures/models/tiny_reid.expected.json.
parity: onnxruntime + Pillow embeddings of 118 real cuhk03-val crops for two reference models →
        tests/fixtures/parity/<model>/{case.json, expected.npy}. Only embeddings are stored:
        the crops and the models stay in ../shared.
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import PIL
from PIL import Image

import reference

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

# (name, source w, h, rect x, y, w, h, output w, h): up, down, mixed, crop of a large frame, tiny.
RESIZE_CASES = [
    ("upscale_64x160_to_128x256", 64, 160, 0, 0, 64, 160, 128, 256),
    ("mixed_97x311_to_128x256", 97, 311, 0, 0, 97, 311, 128, 256),
    ("downscale_300x700_to_64x128", 300, 700, 0, 0, 300, 700, 64, 128),
    ("frame_crop_1920x1080_to_64x128", 1920, 1080, 811, 140, 233, 617, 64, 128),
    ("same_height_200x90_to_50x90", 200, 90, 0, 0, 200, 90, 50, 90),
    ("same_width_40x300_to_40x64", 40, 300, 0, 0, 40, 300, 40, 64),
    ("tiny_5x3_to_7x13", 5, 3, 0, 0, 5, 3, 7, 13),
    # Both sides of Pillow's pass-order rule (vertical first iff it shrinks more).
    ("wide_640x300_to_128x256", 640, 300, 0, 0, 640, 300, 128, 256),
    ("tall_60x500_to_128x256", 60, 500, 0, 0, 60, 500, 128, 256),
    ("slightly_up_90x250_to_128x256", 90, 250, 0, 0, 90, 250, 128, 256),
    ("short_wide_100x100_to_300x50", 100, 100, 0, 0, 100, 100, 300, 50),
]

PARITY_MODELS = ["osnet_x0_25_msmt17", "person-reidentification-retail-0267"]


def pattern(width: int, height: int) -> np.ndarray:
    """Gradient plus hashed noise, wrapping at 256 (sharp edges exercise clipping)."""
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    x, y, c = (a.astype(np.uint32) for a in (x, y, c))
    h = (x * np.uint32(0x9E3779B1)) ^ (y * np.uint32(0x85EBCA77)) ^ (c * np.uint32(0xC2B2AE3D))
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    g = (x * 7 + y * 3 + c * 85) & 255
    return ((g + (h >> np.uint32(25))) & 255).astype(np.uint8)


def resize_fixtures() -> None:
    for name, sw, sh, rx, ry, rw, rh, ow, oh in RESIZE_CASES:
        src = Image.fromarray(pattern(sw, sh), "RGB")
        out = src.crop((rx, ry, rx + rw, ry + rh)).resize((ow, oh), Image.BILINEAR)
        d = FIXTURES / "resize" / name
        d.mkdir(parents=True, exist_ok=True)
        out.save(d / "expected.png")
        (d / "case.json").write_text(json.dumps({
            "source": {"width": sw, "height": sh, "pattern": "tools/make_fixtures.py:pattern"},
            "rect": [rx, ry, rw, rh],
            "output": [ow, oh],
            "reference": f"Pillow {PIL.__version__} crop(rect).resize(output, BILINEAR)",
            "tolerance": {"max_abs_diff": 0},
        }, indent=2) + "\n")
        print(f"resize/{name}")


def parity_fixtures() -> None:
    shared = reference.shared_dir()
    crops = reference.parity_crops()
    for stem in PARITY_MODELS:
        manifest = ROOT / "models" / "reference" / f"{stem}.toml"
        spec = reference.InputSpec.from_manifest(manifest)
        tensors = np.stack([reference.preprocess(p, spec) for p in crops])
        emb = reference.run_tensors(reference.session(shared / "models" / f"{stem}.onnx"), tensors, spec.name)
        d = FIXTURES / "parity" / stem
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "expected.npy", emb.astype(np.float32))
        (d / "case.json").write_text(json.dumps({
            "model": f"models/{stem}.onnx",
            "manifest": f"models/reference/{stem}.toml",
            "crops": [str(p.relative_to(shared)) for p in crops],
            "reference": f"onnxruntime {onnxruntime.__version__}, Pillow {PIL.__version__} "
                         "BILINEAR resize, L2-normalised (tools/reference.py)",
            "tolerance": {"mean_cosine": 0.999999, "min_cosine": 0.99999},
        }, indent=2) + "\n")
        print(f"parity/{stem}: {len(crops)} crops, dim {emb.shape[1]}")


def tiny_models() -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = FIXTURES / "models"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1501)

    def save(name, nodes, inputs, outputs, inits=()):
        graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="reidcam", ir_version=8)
        onnx.checker.check_model(model)
        onnx.save(model, d / f"{name}.onnx")
        print(f"models/{name}.onnx")

    # A miniature ReID net: conv → relu → conv → global pool → flatten, input [N,3,16,8], 6-d output.
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (5, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, (5,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (6, 5, 1, 1)).astype(np.float32), "w2")
    save("tiny_reid", [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["emb"]),
    ], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 8])],
       [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", 6])], [w1, b1, w2])
    # Not an image model: a [1, 10] vector input.
    save("vector_input", [helper.make_node("Relu", ["v"], ["out"])],
         [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 10])],
         [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 10])])
    # An image-shaped input with one channel.
    save("gray_input", [
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        helper.make_node("Flatten", ["g"], ["out"]),
    ], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 8])],
       [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1])])

    # A valid image model whose batch is fixed at 1.
    save("fixed_batch", [
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        helper.make_node("Flatten", ["g"], ["out"]),
    ], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 8])],
       [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])])

    # Reference embedding of the synthetic 40x100 pattern crop through tiny_reid.
    spec = reference.InputSpec(height=16, width=8)
    img = Image.fromarray(pattern(40, 100), "RGB").resize((8, 16), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    x = ((x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)).transpose(2, 0, 1)
    emb = reference.run_tensors(reference.session(d / "tiny_reid.onnx"), x[None].astype(np.float32))
    (d / "tiny_reid.expected.json").write_text(json.dumps({
        "crop": {"width": 40, "height": 100, "pattern": "tools/make_fixtures.py:pattern"},
        "embedding": [float(v) for v in emb[0]],
        "reference": f"onnxruntime {onnxruntime.__version__}, Pillow {PIL.__version__}",
        "tolerance": {"min_cosine": 0.99999},
    }, indent=2) + "\n")


def main() -> int:
    which = set(sys.argv[1:]) or {"resize", "models", "parity"}
    if "models" in which:
        tiny_models()
    if "resize" in which:
        resize_fixtures()
    if "parity" in which:
        parity_fixtures()
    return 0


if __name__ == "__main__":
    sys.exit(main())
