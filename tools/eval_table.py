#!/usr/bin/env python3
"""The float vs int8 evaluation table of docs/eval.md: `reidcam eval` on cuhk03-val for the four
reference models and their int8 versions (made by tools/quantize.py), next to the onnxruntime
reference numbers of ../shared/README.md; then the identity-level table of docs/gallery.md
(`reidcam eval --identities`: the gallery crops enrolled in a real gallery, stored as int8, f16
and f32, scored by max or mean over exemplars).

    tools/.venv/bin/python tools/eval_table.py [--int8-dir DIR] [--skip-int8] [--check POINTS]
                                               [--int8-check POINTS] [--gallery-check POINTS]
"""
import argparse
import sys
from pathlib import Path

import quantize
import reference

ROOT = Path(__file__).resolve().parent.parent
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--int8-dir", type=Path, default=Path("/tmp/reidcam-int8"))
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--check", type=float, metavar="POINTS",
                    help="fail unless float rank-1 and mAP are within POINTS of the onnxruntime reference")
    ap.add_argument("--int8-check", type=float, metavar="POINTS",
                    help="fail unless each int8 model's rank-1 is at most POINTS below its float model's")
    ap.add_argument("--gallery-check", type=float, metavar="POINTS",
                    help="fail unless identity rank-1 with int8 storage is within POINTS of f32 storage")
    args = ap.parse_args()
    shared = reference.require_shared("eval_table")
    if shared is None:
        return 0
    data = shared / "data" / "cuhk03-val"
    args.int8_dir.mkdir(parents=True, exist_ok=True)
    failed = int8_failed = 0
    gallery_rows = []
    print("| model | ORT rank-1 | ORT mAP | reidcam rank-1 | mAP | Δ rank-1 | Δ mAP | mAP official | mINP "
          "| int8 rank-1 | int8 mAP | float crops/s | int8 crops/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for stem, (ref_r1, ref_map) in reference.REFERENCE_MODELS.items():
        manifest = ROOT / "models" / "reference" / f"{stem}.toml"
        batch = 1  # tract is fastest at batch 1 on these models (see docs/eval.md)
        f = reference.reidcam_eval(shared / "models" / f"{stem}.onnx", data, manifest, batch, identities=True)
        gallery_rows.append((stem, f["identities"]))
        fm = f["metrics"]
        q = ("–", "–", "–")
        if not args.skip_int8:
            int8 = quantize.reference_int8(stem, shared, args.int8_dir)
            i = reference.reidcam_eval(int8, data, None, batch)
            q = (f"{i['metrics']['rank1']:.2f}", f"{i['metrics']['map']:.2f}", f"{i['embedding']['crops_per_s']:.1f}")
            if args.int8_check is not None and fm["rank1"] - i["metrics"]["rank1"] > args.int8_check:
                int8_failed += 1
        print(f"| {stem} | {ref_r1:.2f} | {ref_map:.2f} | {fm['rank1']:.2f} | {fm['map']:.2f} "
              f"| {fm['rank1'] - ref_r1:+.2f} | {fm['map'] - ref_map:+.2f} | {fm['map_official']:.2f} | {fm['minp']:.2f} "
              f"| {q[0]} | {q[1]} | {f['embedding']['crops_per_s']:.1f} | {q[2]} |", flush=True)
        if args.check is not None and max(abs(fm["rank1"] - ref_r1), abs(fm["map"] - ref_map)) > args.check:
            failed += 1
    if args.check is not None:
        n = len(reference.REFERENCE_MODELS)
        print(f"{n - failed} passed, {failed} failed (float within ±{args.check} points of onnxruntime)")
    if args.int8_check is not None and not args.skip_int8:
        n = len(reference.REFERENCE_MODELS)
        print(f"{n - int8_failed} passed, {int8_failed} failed (int8 rank-1 at most {args.int8_check} "
              "points below float)")
    gallery_failed = gallery_table(gallery_rows, args.gallery_check)
    return 1 if failed or int8_failed or gallery_failed else 0


def gallery_table(rows, check) -> int:
    """Identity-level rank-1 by storage format and aggregation; returns the number of failures."""
    print()
    print("| model | exemplars per id | identities | rank-1 max f32 | max int8 | max f16 | rank-1 mean f32 | mean int8 | mean f16 "
          "| Δ int8−f32 (max / mean) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed = 0
    for stem, table in rows:
        r1 = {(row["format"], row["aggregation"]): row["metrics"]["rank1"] for row in table}
        first = table[0]["metrics"]
        k = first["exemplars"] / max(first["identities"], 1)
        deltas = [r1[("int8", agg)] - r1[("f32", agg)] for agg in ("max", "mean")]
        print(f"| {stem} | {k:.2f} | {first['identities']} | {r1[('f32', 'max')]:.2f} | {r1[('int8', 'max')]:.2f} "
              f"| {r1[('f16', 'max')]:.2f} | {r1[('f32', 'mean')]:.2f} | {r1[('int8', 'mean')]:.2f} "
              f"| {r1[('f16', 'mean')]:.2f} | {deltas[0]:+.2f} / {deltas[1]:+.2f} |", flush=True)
        if check is not None and max(abs(d) for d in deltas) > check:
            failed += 1
    if check is not None:
        n = len(rows)
        print(f"{n - failed} passed, {failed} failed (int8 storage within ±{check} rank-1 points of f32)")
    return failed


if __name__ == "__main__":
    sys.exit(main())
