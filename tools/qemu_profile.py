#!/usr/bin/env python3
"""Where the ARM instructions of one embedding go, by function: guest instructions per run of
`reidcam bench` under qemu-aarch64, counted per translated block by our TCG plugin
(tools/qemu-insn/insn.c, `profile=FILE`) and attributed to the function whose symbol covers the
block's address in the (static, non-PIE) aarch64 binary. Deterministic like tools/qemu_cost.py:
the per-run figure is (I(N₂ runs) − I(N₁ runs)) / (N₂ − N₁) per function, so loading and
start-up cancel out.

    tools/.venv/bin/python tools/qemu_profile.py --binary target/aarch64-unknown-linux-gnu/release/reidcam \
        --model models/default.onnx [--manifest M.toml] [--cpu cortex-a72] [--top 25] [--env K=V]...

Kernels inlined into their callers count under the caller (`tile::Product::run` holds the 1×1
and full convolutions' tiles).
"""
import argparse
import bisect
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import qemu_cost

RUNS = (2, 12)


def symbols(binary: Path) -> tuple[list[int], list[str]]:
    """Function start addresses (sorted) and their demangled names."""
    out = subprocess.run(["aarch64-linux-gnu-nm", "--defined-only", "-n", "-C", str(binary)],
                         capture_output=True, text=True, check=True).stdout
    starts, names = [], []
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW":
            starts.append(int(parts[0], 16))
            # Generic parameters and hashes make one function many: keep the path.
            names.append(re.sub(r"::h[0-9a-f]{16}$", "", parts[2]))
    return starts, names


def profile(binary: Path, model: Path, manifest: Path, runs: int, cpu: str, env: dict[str, str]) -> Counter:
    """Instructions by block address for one process of `reidcam bench --runs runs`."""
    lib = qemu_cost.plugin()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "blocks.txt"
        cmd = ["qemu-aarch64", "-cpu", cpu, "-plugin", f"{lib},profile={out}", "-d", "plugin", str(binary),
               "bench", "--model", str(model), "--manifest", str(manifest), "--runs", str(runs),
               "--seconds", "0", "--json"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        if proc.returncode != 0 or not out.exists():
            sys.exit(f"qemu_profile: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        counts: Counter = Counter()
        for line in out.read_text().splitlines():
            address, n = line.split()
            counts[int(address, 16)] += int(n)
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, required=True, help="aarch64 reidcam (static)")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--manifest", type=Path, help="default: the model's .toml beside it")
    ap.add_argument("--cpu", default=qemu_cost.CPU)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--env", action="append", default=[], help="K=V for reidcam (e.g. REIDCAM_INT8_DOT=neon-smlal)")
    args = ap.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    manifest = args.manifest or args.model.with_suffix(".toml")
    starts, names = symbols(args.binary)
    per_function: Counter = Counter()
    for sign, runs in ((-1, RUNS[0]), (1, RUNS[1])):
        for address, n in profile(args.binary, args.model, manifest, runs, args.cpu, env).items():
            i = bisect.bisect_right(starts, address) - 1
            per_function[names[i] if i >= 0 else "?"] += sign * n
    total = sum(per_function.values()) / (RUNS[1] - RUNS[0])
    print(f"qemu_profile: {args.model.name} on {args.cpu}: {total / 1e6:.2f} M guest instructions per run")
    for name, n in per_function.most_common(args.top):
        per = n / (RUNS[1] - RUNS[0])
        print(f"{per / 1e6:9.3f} M {100 * per / total:5.1f}%  {name[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
