#!/usr/bin/env python3
"""Embeddings of person crops through the reference pipeline (Pillow + onnxruntime).

    tools/.venv/bin/python tools/reference_embed.py --model M.onnx [--manifest M.toml] \
        [--npy OUT.npy] [--tensors TENSORS.npy] IMAGE...

Prints one JSON object per image ({"path", "embedding"}, like `reidcam embed`), or writes an
N×D .npy with --npy. --tensors also saves the preprocessed [N, 3·H·W] input tensors, which
`reidcam embed --tensors` accepts, for a same-input comparison of the engines.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

import reference


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--manifest", type=Path)
    ap.add_argument("--npy", type=Path, help="write embeddings as an N×D float32 .npy")
    ap.add_argument("--tensors", type=Path, help="also write the input tensors as N×(3·H·W) .npy")
    ap.add_argument("images", type=Path, nargs="+")
    args = ap.parse_args()

    spec = reference.InputSpec.from_manifest(args.manifest)
    tensors = np.stack([reference.preprocess(p, spec) for p in args.images])
    emb = reference.run_tensors(reference.session(args.model), tensors, spec.name)
    if args.tensors:
        np.save(args.tensors, tensors.reshape(len(tensors), -1))
    if args.npy:
        np.save(args.npy, emb)
    else:
        for path, row in zip(args.images, emb):
            print(json.dumps({"path": str(path), "embedding": [float(v) for v in row]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
