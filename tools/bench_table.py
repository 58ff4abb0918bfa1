#!/usr/bin/env python3
"""Summarise `cargo bench --bench gallery` as a markdown table.

Reads criterion's estimates (median time per iteration) from
$CARGO_TARGET_DIR/criterion (default: target/criterion) and prints, per gallery size and storage
format, ns per exemplar for the gallery with SIMD kernels, with scalar kernels, and the naive
loop, plus each one's speed-up over the naive loop measured in the same run.
"""

import argparse
import json
import os
import sys
from pathlib import Path


def median_ns(root: Path, group: str, function: str, value: int) -> float:
    path = root / group / function / str(value) / "new" / "estimates.json"
    if not path.is_file():
        sys.exit(f"{path}: missing (run `cargo bench --bench gallery` first)")
    return json.loads(path.read_text())["median"]["point_estimate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "criterion"
    parser.add_argument("--criterion", type=Path, default=default, help=f"criterion directory (default {default})")
    args = parser.parse_args()
    print("| exemplars | format | gallery, SIMD (ns/exemplar) | gallery, scalar kernels | naive loop | SIMD speed-up vs naive | scalar vs naive |")
    print("|---|---|---|---|---|---|---|")
    for n in (1_000, 10_000, 100_000):
        group = f"match_{n}"
        for fmt in ("int8", "f32"):
            simd = median_ns(args.criterion, group, f"{fmt}_simd", n) / n
            scalar = median_ns(args.criterion, group, f"{fmt}_scalar", n) / n
            naive = median_ns(args.criterion, group, f"{fmt}_naive", n) / n
            print(
                f"| {n:,} | {fmt} | {simd:.1f} | {scalar:.1f} | {naive:.1f} | "
                f"{naive / simd:.2f}× | {naive / scalar:.2f}× |"
            )


if __name__ == "__main__":
    main()
