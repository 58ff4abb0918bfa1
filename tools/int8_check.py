#!/usr/bin/env python3
"""int8 acceptance: quantise a float model with tools/quantize.py, embed crops with both models
through `reidcam embed`, and require mean cosine(int8, float) ≥ --min-mean.

    tools/.venv/bin/python tools/int8_check.py [--model osnet_x0_25_msmt17] [--crops N|all] [--out DIR]
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import reference

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="osnet_x0_25_msmt17")
    ap.add_argument("--crops", default="118", help="how many cuhk03-val crops (evenly spread), or 'all'")
    ap.add_argument("--min-mean", type=float, default=0.98)
    ap.add_argument("--out", type=Path, help="keep the int8 model here (default: a temporary dir)")
    args = ap.parse_args()

    shared = reference.require_shared("int8")
    if shared is None:
        return 0
    binary = reference.reidcam_binary()
    float_model = shared / "models" / f"{args.model}.onnx"
    manifest = ROOT / "models" / "reference" / f"{args.model}.toml"
    crops = reference.parity_crops(step=1)
    if args.crops != "all":
        crops = reference.parity_crops(step=max(1, len(crops) // int(args.crops)))[: int(args.crops)]

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        int8_model = out / f"{args.model}_int8.onnx"
        subprocess.run([sys.executable, str(ROOT / "tools" / "quantize.py"), "--model", str(float_model),
                        "--manifest", str(manifest), "--out", str(int8_model)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results = {}
        for name, model, extra in [("float", float_model, ["--manifest", str(manifest)]),
                                   ("int8", int8_model, [])]:
            npy = Path(tmp) / f"{name}.npy"
            started = time.monotonic()
            subprocess.run([str(binary), "embed", "--model", str(model), *extra, "--batch", "1",
                            "--format", "npy", "--output", str(npy), *map(str, crops)], check=True)
            results[name] = (np.load(npy), time.monotonic() - started)
        cos = (results["float"][0] * results["int8"][0]).sum(axis=1)
        size_f, size_q = float_model.stat().st_size, int8_model.stat().st_size
    ok = cos.mean() >= args.min_mean
    print(f"int8 {args.model}: {len(cos)} crops, cosine to float mean {cos.mean():.4f} min {cos.min():.4f} "
          f"(need mean >= {args.min_mean}); size {size_q / 1024:.0f} KiB vs float {size_f / 1024:.0f} KiB; "
          f"reidcam embed time int8 {results['int8'][1]:.1f} s vs float {results['float'][1]:.1f} s")
    print(f"{int(ok)} passed, {int(not ok)} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
