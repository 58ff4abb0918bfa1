#!/usr/bin/env python3
"""int8 acceptance: quantise float models with tools/quantize.py, embed crops with each float and
int8 model through `reidcam embed` (the int8 one through reidcam's int8 path, embed::int8), and
require mean cosine(int8, float) ≥ --min-mean per model.

    tools/.venv/bin/python tools/int8_check.py [--model osnet_x0_25_msmt17]... [--crops N|all]
                                               [--out DIR]

With --out, DIR keeps each `X_int8.onnx` (+ its manifest `X_int8.toml`) beside links to the float
`X.onnx` in ../shared and its manifest (`quantize.reference_int8`), the layout
`benches/versus_onnxruntime.rs` reads. DIR must be outside the repository.
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import quantize
import reference

ROOT = Path(__file__).resolve().parent.parent


def check(name: str, shared: Path, out: Path, crops: list[Path], min_mean: float) -> bool:
    float_model = out / f"{name}.onnx"
    int8_model = quantize.reference_int8(name, shared, out, fresh=True)
    results = {}
    for variant, model in (("float", float_model), ("int8", int8_model)):
        npy = out / f"{name}.{variant}.npy"
        started = time.monotonic()
        subprocess.run([str(reference.reidcam_binary()), "embed", "--model", str(model),
                        "--manifest", str(model.with_suffix(".toml")),
                        "--batch", "1", "--format", "npy", "--output", str(npy), *map(str, crops)], check=True)
        results[variant] = (np.load(npy), time.monotonic() - started)
        npy.unlink()
    cos = (results["float"][0] * results["int8"][0]).sum(axis=1)
    size_f, size_q = float_model.stat().st_size, int8_model.stat().st_size
    ok = bool(cos.mean() >= min_mean)
    print(f"int8 {name}: {len(cos)} crops, cosine to float mean {cos.mean():.4f} min {cos.min():.4f} "
          f"(need mean >= {min_mean}); size {size_q / 1024:.0f} KiB vs float {size_f / 1024:.0f} KiB; "
          f"reidcam embed time int8 {results['int8'][1]:.1f} s vs float {results['float'][1]:.1f} s"
          f"{'' if ok else ': FAILED'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="a model of ../shared/models (repeatable; "
                    "default osnet_x0_25_msmt17)")
    ap.add_argument("--crops", default="118", help="how many cuhk03-val crops (evenly spread), or 'all'")
    ap.add_argument("--min-mean", type=float, default=0.98)
    ap.add_argument("--out", type=Path, help="keep the int8 models here (default: a temporary dir)")
    args = ap.parse_args()

    shared = reference.require_shared("int8")
    if shared is None:
        return 0
    crops = reference.parity_crops(step=1)
    if args.crops != "all":
        crops = reference.parity_crops(step=max(1, len(crops) // int(args.crops)))[: int(args.crops)]
    names = args.model or ["osnet_x0_25_msmt17"]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        passed = sum(check(name, shared, out, crops, args.min_mean) for name in names)
    print(f"{passed} passed, {len(names) - passed} failed")
    return 0 if passed == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
