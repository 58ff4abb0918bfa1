#!/usr/bin/env python3
"""The float vs int8 evaluation table of docs/eval.md: `reidcam eval` on cuhk03-val for the four
reference models and their int8 versions (made by tools/quantize.py), next to the onnxruntime
reference numbers of ../shared/README.md.

    tools/.venv/bin/python tools/eval_table.py [--int8-dir DIR] [--skip-int8] [--check POINTS]
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import reference

ROOT = Path(__file__).resolve().parent.parent
def run_eval(binary, model, manifest, data, batch):
    cmd = [str(binary), "eval", "--model", str(model), "--data", str(data), "--json", "--batch", str(batch)]
    if manifest:
        cmd += ["--manifest", str(manifest)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--int8-dir", type=Path, default=Path("/tmp/reidcam-int8"))
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--check", type=float, metavar="POINTS",
                    help="fail unless float rank-1 and mAP are within POINTS of the onnxruntime reference")
    args = ap.parse_args()
    shared = reference.require_shared("eval_table")
    if shared is None:
        return 0
    binary = reference.reidcam_binary()
    data = shared / "data" / "cuhk03-val"
    args.int8_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    print("| model | ORT rank-1 | ORT mAP | reidcam rank-1 | mAP | Δ rank-1 | Δ mAP | mAP official | mINP "
          "| int8 rank-1 | int8 mAP | float crops/s | int8 crops/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for stem, (ref_r1, ref_map) in reference.REFERENCE_MODELS.items():
        manifest = ROOT / "models" / "reference" / f"{stem}.toml"
        batch = 1  # tract is fastest at batch 1 on these models (see docs/eval.md)
        f = run_eval(binary, shared / "models" / f"{stem}.onnx", manifest, data, batch)
        fm = f["metrics"]
        q = ("–", "–", "–")
        if not args.skip_int8:
            int8 = args.int8_dir / f"{stem}_int8.onnx"
            if not int8.exists():
                subprocess.run([sys.executable, str(ROOT / "tools" / "quantize.py"), "--model",
                                str(shared / "models" / f"{stem}.onnx"), "--out", str(int8)],
                               check=True, capture_output=True)
            i = run_eval(binary, int8, None, data, batch)
            q = (f"{i['metrics']['rank1']:.2f}", f"{i['metrics']['map']:.2f}", f"{i['embedding']['crops_per_s']:.1f}")
        print(f"| {stem} | {ref_r1:.2f} | {ref_map:.2f} | {fm['rank1']:.2f} | {fm['map']:.2f} "
              f"| {fm['rank1'] - ref_r1:+.2f} | {fm['map'] - ref_map:+.2f} | {fm['map_official']:.2f} | {fm['minp']:.2f} "
              f"| {q[0]} | {q[1]} | {f['embedding']['crops_per_s']:.1f} | {q[2]} |", flush=True)
        if args.check is not None and max(abs(fm["rank1"] - ref_r1), abs(fm["map"] - ref_map)) > args.check:
            failed += 1
    if args.check is not None:
        n = len(reference.REFERENCE_MODELS)
        print(f"{n - failed} passed, {failed} failed (float within ±{args.check} points of onnxruntime)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
