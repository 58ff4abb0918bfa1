#!/usr/bin/env python3
"""Deterministic cost of the ARM inference path: guest instructions per embedding, counted by a
QEMU TCG plugin (tools/qemu-insn/insn.c) while the aarch64 `reidcam bench` runs under
qemu-aarch64 (cortex-a72). Emulated time says nothing about a board; instruction counts do not
depend on the host's load, so a regression in the ARM code path shows up as a changed count.

    tools/.venv/bin/python tools/qemu_cost.py --binary target/aarch64-unknown-linux-gnu/release/reidcam \
        [--check tests/fixtures/qemu-cost/osnet_x0_25_msmt17.json] [--update] [--tract no]

The count per embedding is (I(N₂ runs) − I(N₁ runs)) / (N₂ − N₁), N₁ = 6, N₂ = 30 (see RUNS):
start-up, model loading and optimisation cancel out. With --check, fails if the count grew by
more than the baseline's tolerance; --update rewrites the baseline. tract's own ops are counted
beside ours for comparison (never checked; ~70% of the instructions counted): --tract no
leaves them out (CI).

    tools/.venv/bin/python tools/qemu_cost.py --binary ... --int8 [--int8-model DIR/X_int8.onnx]...

    tools/.venv/bin/python tools/qemu_cost.py --binary ... --frame [--cpu cortex-a72] \
        [--detector D.onnx --detector-size WxH]

--frame instead counts the daemon's per-frame work with its defaults: guest instructions per
detector frame (`reidcam detect` with models/detector.onnx on a 768×432 frame, the shared
videos' size: (I(3 frames) − I(1 frame)) / 2, JPEG decoding of the frame included, a few million)
and per embedding of the default model, and what a frame with one and with three people costs.

--int8 instead compares int8 models with their float ones through reidcam (our default model,
and each --int8-model with its float `X.onnx` beside it, as tools/int8_check.py --out leaves
them) on a CPU with the dot-product extension (cortex-a76: sdot, the int8 kernel) and one
without (cortex-a72: NEON's widening multiplies by default, the same embeddings; and the float
path from dequantised weights that CPUs without any int8 product take, REIDCAM_INT8_DOT=none).
Fails unless int8 costs at most 0.6x float on the first (our default model; less than float
for others), at most 0.85x float (our default model; 0.92x others) on the second, and at most
1.05x from dequantised weights.
"""
import argparse
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import reference

ROOT = Path(__file__).resolve().parent.parent
CPU = "cortex-a72"
# Two process lengths whose difference is the per-embedding cost, one process each. A process
# sometimes counts a few million instructions more than another of the same binary on the same
# input (seen: 1123.4, 1130.2, 1123.6 M for 12 runs of our default model), never fewer. Over a
# difference of 4 runs that moved the small default model's figure by up to 10%; with the least
# of two processes over 6 runs it still once came out 10% low (both 6-run processes high). Over
# 24 runs such an event moves it by at most ~3% (0.7% for OSNet x0.25), inside the checks'
# margins, so one process per count does.
RUNS = (6, 30)


def in_parallel(jobs: dict, workers: int | None = None) -> dict:
    """Runs each of `jobs` (key: a function without arguments, one qemu process each) on its own
    core, `workers` (default: every core) at a time, and returns key: result. A count does not
    depend on the host's load, so the processes may share the machine (CI: 2 cores, half the
    step's time)."""
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        futures = {key: pool.submit(job) for key, job in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def plugin() -> Path:
    src = ROOT / "tools" / "qemu-insn" / "insn.c"
    out = Path(os.environ.get("REIDCAM_CACHE", Path.home() / ".cache" / "reidcam")) / "libinsn.so"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(out), str(src)], check=True)
    return out


def counted(cmd: list[str], cpu: str, lib: Path, env: dict[str, str] | None = None,
            tool: str = "qemu_cost") -> tuple[int, str]:
    """Guest instructions of one process of `cmd` (the guest program and its arguments, after
    qemu's own options such as -L) under qemu-aarch64 -cpu `cpu` with the plugin `lib`, and its
    standard output; exits with the process's error output if it fails."""
    full = ["qemu-aarch64", "-cpu", cpu, "-plugin", str(lib), "-d", "plugin", *cmd]
    proc = subprocess.run(full, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"{tool}: {' '.join(full)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    found = re.findall(r"guest instructions: (\d+)", proc.stderr + proc.stdout)
    if not found:
        sys.exit(f"{tool}: the plugin reported nothing for {' '.join(full)}:\n{proc.stderr[-2000:]}")
    return int(found[-1]), proc.stdout


def instructions(binary: Path, lib: Path, model: Path, manifest: Path, runs: int, kernels: str,
                 cpu: str = CPU, env: dict[str, str] | None = None) -> int:
    """Guest instructions of one process of `reidcam bench --runs RUNS` (`env`: more variables)."""
    count, stdout = counted([str(binary), "bench", "--model", str(model), "--manifest", str(manifest),
                             "--runs", str(runs), "--seconds", "0", "--json", "--kernels", kernels], cpu, lib, env)
    report = json.loads(stdout)
    if report["runs"] != runs:
        sys.exit(f"qemu_cost: asked for {runs} runs, bench made {report['runs']}")
    return count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, required=True, help="aarch64 reidcam")
    ap.add_argument("--model-name", default="osnet_x0_25_msmt17")
    ap.add_argument("--check", type=Path, help="baseline JSON to compare with")
    ap.add_argument("--update", action="store_true", help="rewrite the --check baseline with this measurement")
    ap.add_argument("--tract", choices=("yes", "no"), default="yes",
                    help="also count tract's own ops (the baseline's informative figure; about 70%% of the "
                         "guest instructions counted): CI says no")
    ap.add_argument("--int8", action="store_true", help="instead: int8 models vs their float ones (see above)")
    ap.add_argument("--frame", action="store_true", help="instead: the default detector and model per frame")
    ap.add_argument("--cpu", default=CPU, help="with --frame: the emulated CPU")
    ap.add_argument("--frame-model", type=Path, default=ROOT / "models" / "default.onnx",
                    help="with --frame: the ReID model (default: models/default.onnx)")
    ap.add_argument("--detector", type=Path, default=ROOT / "models" / "detector.onnx",
                    help="with --frame: the detector (default: models/detector.onnx)")
    ap.add_argument("--detector-size", help="with --frame: the detector's input WxH (default: its manifest's)")
    ap.add_argument("--int8-model", type=Path, action="append", default=[],
                    help="with --int8: another X_int8.onnx (float X.onnx and manifests beside it)")
    args = ap.parse_args()
    if args.update and args.tract == "no":
        ap.error("--update writes tract's own ops' figure into the baseline: leave out --tract no")
    if args.int8:
        return int8_vs_float(args.binary, args.int8_model)
    if args.frame:
        return per_frame(args.binary, args.cpu, args.frame_model, args.detector, args.detector_size)
    shared = reference.require_shared("qemu_cost")
    if shared is None:
        return 0
    model = shared / "models" / f"{args.model_name}.onnx"
    manifest = ROOT / "models" / "reference" / f"{args.model_name}.toml"
    lib = plugin()
    version = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]

    # Our kernels, and tract's own ops in the same run (what our kernels save on ARM; informative,
    # not checked): the four processes at once. Without tract's (`--tract no`), a third of the time.
    engines = ("reidcam", "tract") if args.tract == "yes" else ("reidcam",)
    counts = in_parallel({(kernels, n): (lambda kernels=kernels, n=n:
                                         instructions(args.binary, lib, model, manifest, n, kernels))
                          for kernels in engines for n in RUNS})

    def per_embedding(kernels: str) -> float:
        per = (counts[kernels, RUNS[1]] - counts[kernels, RUNS[0]]) / (RUNS[1] - RUNS[0])
        fixed = counts[kernels, RUNS[0]] - per * (RUNS[0] + 5)  # bench makes 5 untimed warm-up runs first
        print(f"qemu_cost: {args.model_name} on {CPU} ({version}), --kernels {kernels}: "
              f"{per / 1e6:.2f} M guest instructions per embedding; start-up + load + optimise {fixed / 1e6:.1f} M")
        return per

    per = per_embedding("reidcam")
    if args.tract == "yes":
        stock = per_embedding("tract")
        print(f"qemu_cost: reidcam kernels / tract's own ops: {per / stock:.4f}")
    if args.check is None:
        return 0
    if args.update:
        baseline = {
            "model": args.model_name,
            "cpu": CPU,
            "qemu": version,
            "instructions_per_embedding": round(per),
            # Above the build-to-build noise of unchanged code (see docs/cross.md).
            "tolerance": 0.03,
            "how": f"tools/qemu_cost.py: (I({RUNS[1]} runs) - I({RUNS[0]} runs)) / {RUNS[1] - RUNS[0]}"
                   " with tools/qemu-insn/insn.c",
            "tract_own_ops_instructions_per_embedding": round(stock),
        }
        args.check.parent.mkdir(parents=True, exist_ok=True)
        args.check.write_text(json.dumps(baseline, indent=2) + "\n")
        print(f"qemu_cost: baseline written to {args.check}")
        return 0
    baseline = json.loads(args.check.read_text())
    ratio = per / baseline["instructions_per_embedding"]
    print(f"qemu_cost: ratio to the baseline ({baseline['instructions_per_embedding'] / 1e6:.2f} M): {ratio:.4f}")
    if ratio > 1 + baseline["tolerance"]:
        print(f"qemu_cost: FAILED: the ARM path costs {100 * (ratio - 1):.1f}% more than the baseline "
              f"(tolerance {100 * baseline['tolerance']:.0f}%)")
        return 1
    if ratio < 1 - baseline["tolerance"]:
        print("qemu_cost: cheaper than the baseline: update it with --update")
    return 0


def detect_instructions(binary: Path, lib: Path, image: Path, frames: int, cpu: str,
                        detector: Path, size: str | None) -> int:
    """Guest instructions of one `reidcam detect` process over `frames` copies of `image`."""
    return counted([str(binary), "detect", "--detector", str(detector), *(["--size", size] if size else []),
                    *[str(image)] * frames], cpu, lib)[0]


def per_frame(binary: Path, cpu: str, model: Path, detector: Path, size: str | None) -> int:
    """The default detector per frame and the default model per embedding (see the module docs)."""
    import tempfile

    import numpy as np
    from PIL import Image

    lib = plugin()
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "frame.jpg"
        rng = np.random.default_rng(0)
        y, x = np.mgrid[0:432, 0:768]
        pixels = np.stack([x * 255 // 768, y * 255 // 432, (x + y) % 256], 2) + rng.integers(0, 30, (432, 768, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(image, quality=90)
        jobs = {("detect", n): (lambda n=n: detect_instructions(binary, lib, image, n, cpu, detector, size))
                for n in (1, 3)}
        jobs |= {("embed", n): (lambda n=n: instructions(binary, lib, model, model.with_suffix(".toml"), n,
                                                         "reidcam", cpu))
                 for n in RUNS}
        counts = in_parallel(jobs)
    per_detection = (counts["detect", 3] - counts["detect", 1]) / 2
    embed = (counts["embed", RUNS[1]] - counts["embed", RUNS[0]]) / (RUNS[1] - RUNS[0])
    print(f"qemu_cost: {cpu}: detector {detector.name} at {size or 'its manifest size'} "
          f"{per_detection / 1e6:.1f} M guest instructions per 768x432 frame (letterbox, network, "
          f"decoding); {model.name} {embed / 1e6:.2f} M per embedding; a frame with one person "
          f"{(per_detection + embed) / 1e6:.1f} M, with three {(per_detection + 3 * embed) / 1e6:.1f} M")
    return 0


def int8_vs_float(binary: Path, extra: list[Path]) -> int:
    """int8 models against their float models through our kernels (see the module docs)."""
    lib = plugin()
    pairs = [(ROOT / "models" / "default.onnx", ROOT / "models" / "default_int8.onnx")]
    for int8 in extra:
        float_model = int8.with_name(int8.name.removesuffix("_int8.onnx") + ".onnx")
        if not (int8.name.endswith("_int8.onnx") and float_model.exists()):
            print(f"qemu_cost: FAILED: {int8}: expected X_int8.onnx with its float X.onnx beside it")
            return 1
        pairs.append((float_model, int8))
    # With sdot int8 must be cheaper. Without (cortex-a72) it runs through the widening product
    # by default (the same embeddings as sdot): measured 2026-12-06 (night) 0.82 x float for our
    # default model, 0.87 for OSNet x0.25 (whose layers have fewer input channels: each tile's
    # finishing weighs more); with sdot 0.51 and 0.59; the float path from dequantised weights
    # (REIDCAM_INT8_DOT=none: armv7, x86 below AVX2) 1.00. The limits are issue 23's for our
    # default model and catch a regression.
    def limits(default: bool) -> list[tuple[str, str | None, float]]:
        return [("cortex-a76", None, 0.6 if default else 0.999),
                ("cortex-a72", None, 0.85 if default else 0.92),
                ("cortex-a72", "none", 1.05)]

    # Every process of every pair at once (they are independent), then the ratios.
    jobs = {}
    for float_model, int8 in pairs:
        for cpu, dot, _ in limits(float_model == pairs[0][0]):
            for model, env in ((float_model, {}), (int8, {"REIDCAM_INT8_DOT": dot} if dot else {})):
                for n in RUNS:
                    key = (model, cpu, dot if model == int8 else None, n)
                    jobs[key] = (lambda model=model, cpu=cpu, env=env, n=n:
                                 instructions(binary, lib, model, model.with_suffix(".toml"), n, "reidcam", cpu, env))
    counts = in_parallel(jobs)

    def per_embedding(model: Path, cpu: str, dot: str | None) -> float:
        return (counts[model, cpu, dot, RUNS[1]] - counts[model, cpu, dot, RUNS[0]]) / (RUNS[1] - RUNS[0])

    failed = 0
    for float_model, int8 in pairs:
        for cpu, dot, most in limits(float_model == pairs[0][0]):
            per_float = per_embedding(float_model, cpu, None)
            per_int8 = per_embedding(int8, cpu, dot)
            ratio = per_int8 / per_float
            ok = ratio <= most
            failed += not ok
            print(f"qemu_cost: {float_model.stem} on {cpu}: float {per_float / 1e6:.2f} M, int8 "
                  f"({'dequantised weights' if dot == 'none' else dot or 'default product'}) {per_int8 / 1e6:.2f} M guest instructions per embedding: "
                  f"int8 / float {ratio:.4f}" + ("" if ok else f": FAILED (must be at most {most})"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
