#!/usr/bin/env python3
"""The table of candidate ReID models: parameters, multiply-accumulates, ms per crop through
`reidcam bench` (this machine, one run), cuhk03-val through `reidcam eval`, and agreement with
the teacher out of domain.

    tools/.venv/bin/python tools/candidates.py MODEL.onnx... [--teacher T.onnx] [--json F]

Agreement out of domain: on crops of two domains no candidate was trained on — the one-by-one
video (indoor) and the Market-1501 frames (outdoor campus), as `reidtrain mine` leaves them —
the Pearson correlation between a candidate's pairwise cosine similarities and the teacher's
(onnxruntime, each model at its own input size; 1 = the same neighbours at the same distances),
and the similarity of the two people of the one-by-one video the teacher tells apart least
well (persons 2 and 4, both dressed in black: teacher 0.65) — the pair a student most often
merges.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from PIL import Image

import reference

CACHE = Path(os.environ.get("REIDTRAIN_CACHE") or Path.home() / ".cache/reidcam/reidtrain")


def spec_of(model: Path) -> reference.InputSpec:
    sidecar = model.with_suffix(".toml")
    ref = Path(__file__).resolve().parent.parent / "models/reference" / f"{model.stem}.toml"
    return reference.InputSpec.from_manifest(sidecar if sidecar.is_file() else ref)


def params_and_macs(model: Path, spec: reference.InputSpec) -> tuple[int, int]:
    """Float parameters, and multiply-accumulates of the convolutions and matrix products on one
    crop. Output shapes come from running the graph (onnxruntime, every conv's output exposed):
    static shape inference stops at data-dependent reshapes (retail-0267's group norms)."""
    m = onnx.load(str(model))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    params = sum(a.size for a in inits.values() if a.dtype.kind == "f")
    convs = [n for n in m.graph.node if n.op_type in ("Conv", "QLinearConv")]
    known = {o.name for o in m.graph.output}
    for n in convs:
        if n.output[0] not in known:
            m.graph.output.append(onnx.ValueInfoProto(name=n.output[0]))
    sess = reference.session(m.SerializeToString())
    x = np.zeros((1, 3, spec.height, spec.width), np.float32)
    names = [n.output[0] for n in convs]
    shapes = dict(zip(names, (o.shape for o in sess.run(names, {sess.get_inputs()[0].name: x}))))
    macs = 0
    for n in convs:
        w = inits.get(n.input[3 if n.op_type == "QLinearConv" else 1])
        if w is not None:
            macs += int(np.prod(shapes[n.output[0]])) * int(np.prod(w.shape[1:]))
    for n in m.graph.node:
        if n.op_type in ("Gemm", "MatMul") and n.input[1] in inits:
            macs += int(np.prod(inits[n.input[1]].shape))
    return params, macs


def reidcam_json(*args: str) -> dict:
    run = subprocess.run([str(reference.reidcam_binary()), *args, "--json"], capture_output=True,
                         text=True)
    if run.returncode != 0:
        raise SystemExit(f"reidcam {args[0]}: {run.stderr.strip()}")
    return json.loads(run.stdout)


def embed(model: Path, spec: reference.InputSpec, pixels: np.ndarray) -> np.ndarray:
    sess = reference.session(model)
    x = np.stack([np.asarray(Image.fromarray(p).resize((spec.width, spec.height), Image.BILINEAR))
                  for p in pixels]).astype(np.float32) / np.float32(spec.pixel_divisor)
    if spec.channel_order == "bgr":
        x = x[..., ::-1]
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return reference.run_tensors(sess, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def ood_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name in ("one-by-one", "market-frames"):
        path = CACHE / "mined" / f"{name}.npz"
        if not path.is_file():
            raise SystemExit(f"{path}: missing; run `python -m reidtrain mine` (tools/README.md)")
        with np.load(path) as z:
            out[name] = (z["pixels"], z["person"])
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    iu = np.triu_indices(len(a), 1)
    return float(np.corrcoef((a @ a.T)[iu], (b @ b.T)[iu])[0, 1])


def pair_24(e: np.ndarray, persons: np.ndarray) -> float:
    m = [e[persons == p].mean(0) for p in (2, 4)]
    m = [v / np.linalg.norm(v) for v in m]
    return float(m[0] @ m[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--teacher", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    shared = reference.require_shared("candidates")
    if shared is None:
        return 0
    teacher = args.teacher or shared / "models/person-reidentification-retail-0267.onnx"
    sets = ood_sets()
    t_spec = spec_of(teacher)
    t_emb = {k: embed(teacher, t_spec, px) for k, (px, _) in sets.items()}
    rows = []
    for model in args.models:
        spec = spec_of(model)
        params, macs = params_and_macs(model, spec)
        bench = reidcam_json("bench", "--model", str(model), "--seconds", "3")
        ev = reidcam_json("eval", "--model", str(model), "--data", str(shared / "data/cuhk03-val"))
        emb = {k: embed(model, spec, px) for k, (px, _) in sets.items()}
        rows.append({
            "model": model.name, "input": f"{spec.height}x{spec.width}", "params": params,
            "macs": macs, "ms": bench["latency_per_crop_ms"]["p50"],
            "rank1": ev["metrics"]["rank1"], "mAP": ev["metrics"]["map"],
            "pearson_one_by_one": pearson(emb["one-by-one"], t_emb["one-by-one"]),
            "pearson_market": pearson(emb["market-frames"], t_emb["market-frames"]),
            "p2_p4": pair_24(emb["one-by-one"], sets["one-by-one"][1]),
        })
        print(json.dumps(rows[-1]), file=sys.stderr)
    print("| model | input | parameters | MACs | ms per crop | cuhk03-val rank-1 | mAP | "
          "agreement one-by-one | agreement Market | persons 2–4 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['input']} | {r['params']:,} | {r['macs'] / 1e6:.1f} M | "
              f"{r['ms']:.3f} | {r['rank1']:.2f} | {r['mAP']:.2f} | {r['pearson_one_by_one']:.3f} | "
              f"{r['pearson_market']:.3f} | {r['p2_p4']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
