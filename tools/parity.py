#!/usr/bin/env python3
"""Engine parity: tract (through `reidcam embed --tensors`) vs onnxruntime on the same input tensors.

    tools/.venv/bin/python tools/parity.py [--reidcam BIN] [--runner CMD] [--crops N] [--min-cosine 0.99999] [MODEL.onnx ...]

For each model (default: the four reference ReID models in ../shared/models, with the manifests in
models/reference/), N real cuhk03-val crops are preprocessed once by the reference pipeline; both
engines embed the very same tensors and the per-crop cosine must be ≥ --min-cosine. Exit 1 if
any model falls short, 2 if shared data is missing under CI. --runner runs a cross-built binary
under an emulator, e.g. `--runner "tools/qemu-runner arm"` for the armv7 build under qemu-arm.
"""
import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import reference

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reidcam", type=Path, help="reidcam binary (default: target/release/reidcam)")
    ap.add_argument("--runner", default="", help="command the binary runs under (e.g. 'tools/qemu-runner arm')")
    ap.add_argument("--crops", type=int, default=40)
    ap.add_argument("--min-cosine", type=float, default=0.99999)
    ap.add_argument("models", type=Path, nargs="*")
    args = ap.parse_args()

    shared = reference.require_shared("parity")
    if shared is None:
        return 0
    binary = args.reidcam or reference.reidcam_binary()
    models = args.models or [shared / "models" / f"{m}.onnx" for m in reference.REFERENCE_MODELS]
    crops = reference.parity_crops(step=max(1, 938 // args.crops))[: args.crops]

    failed = 0
    print(f"{'model':45} {'crops':>5} {'min cosine':>11} {'mean cosine':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            manifest = ROOT / "models" / "reference" / f"{model.stem}.toml"
            if not manifest.exists():
                manifest = model.with_suffix(".toml") if model.with_suffix(".toml").exists() else None
            spec = reference.InputSpec.from_manifest(manifest)
            tensors = np.stack([reference.preprocess(p, spec) for p in crops])
            want = reference.run_tensors(reference.session(model), tensors, spec.name)
            tfile, efile = Path(tmp) / "tensors.npy", Path(tmp) / "emb.npy"
            np.save(tfile, tensors.reshape(len(tensors), -1))
            cmd = shlex.split(args.runner) + [str(binary), "embed", "--model", str(model), "--tensors", str(tfile),
                   "--format", "npy", "--output", str(efile)]
            if manifest:
                cmd += ["--manifest", str(manifest)]
            subprocess.run(cmd, check=True)
            got = np.load(efile)
            cos = reference.cosine_rows(got, want)
            ok = cos.min() >= args.min_cosine
            failed += not ok
            print(f"{model.name:45} {len(cos):5d} {cos.min():11.7f} {cos.mean():12.7f}  {'ok' if ok else 'FAILED'}")
    passed = len(models) - failed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
