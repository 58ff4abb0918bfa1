#!/usr/bin/env python3
"""reidcam beside its peers on ARM, counted: guest instructions per inference under
qemu-aarch64 with our TCG plugin (tools/qemu-insn/insn.c), for the same models on the same
emulated cores (cortex-a72: no dot product, the Raspberry Pi 4; cortex-a76: `sdot`, the Pi 5).

    tools/.venv/bin/python tools/arm_peers.py --binary target/aarch64-unknown-linux-gnu/release/reidcam \
        [--cpu cortex-a72] [--cpu cortex-a76] [--int8-dir DIR] [--detectors | --detectors-only] [--litert] [--json OUT]

The peers are onnxruntime's own aarch64 build (the PyPI wheel, the version tools/requirements.txt
pins for x86) and, with --litert, LiteRT (`ai-edge-litert`, TensorFlow Lite's runtime, whose
default delegate is XNNPACK), run by an arm64 CPython: Debian 12's arm64 packages, fetched from
deb.debian.org by their `Packages` index and checked against its SHA-256 sums, unpacked into a
sysroot under ~/.cache/reidcam/arm64-peers (given to qemu with -L), the wheels of
tools/requirements-arm-peers.txt installed into it with pip's `--platform`. Nothing is
installed on the host.

LiteRT runs .tflite files: onnx2tf (tools/requirements-tflite.txt, its own venv) converts the
float ONNX embedders and detectors (our free-size detector at the row's input size), and for
the embedders' int8 rows quantises them itself (int8 weights per channel and
activations, float input and output, calibrated on CUHK03 training crops through the model's
normalisation): LiteRT's int8 model is its converter's, not our QOperator file. onnx2tf downloads
sample pictures to check its conversion unless a file of them is in its working directory:
the tool puts training crops there.

onnxruntime's cpuinfo reads /proc/cpuinfo and the sysfs CPU tree, which under qemu-user are the
host's (x86): it then crashes. qemu-user looks up every absolute path under the -L prefix first,
so the sysroot carries a /proc/cpuinfo and /sys/devices/system/cpu describing one core of the
emulated kind (its MIDR, its features), rewritten before each run.

Per inference: (I(N₂) − I(N₁)) / (N₂ − N₁) over two processes, N₁ = 2, N₂ = 12, each after one
untimed run; start-up, import, loading and graph optimisation cancel out. One thread each:
onnxruntime with intra- and inter-op threads 1, sequential, no spinning; reidcam `bench`
(tools/qemu_cost.py's counts, RUNS there). Embedders take one crop of their input size.
Detectors (--detectors): onnxruntime the network alone; reidcam `reidcam detect` on a picture of
exactly the network's input size (its letterbox a copy), less the same picture through our
default detector at a 32×32 input (decoding the picture, letterbox, boxes; `reidcam_frame`
keeps the whole).

int8: the `X_int8.onnx` files tools/quantize.py makes (QOperator QLinearConv/QLinearMatMul) run
as they are in both engines; reidcam's default int8 path on a core without `sdot` is float from
dequantised weights (what a user gets; docs/speed.md), and the widening-multiply kernel is
counted beside it (REIDCAM_INT8_DOT=neon-smlal).
"""
import argparse
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import qemu_cost
import reference

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("REIDCAM_CACHE", Path.home() / ".cache" / "reidcam")) / "arm64-peers"
DEBIAN = "http://deb.debian.org/debian"
SUITE = "bookworm"
# What an arm64 CPython 3.11 with numpy and onnxruntime needs; the rest of the closure follows
# the packages' Depends. Left out: maintainer-script machinery and data nobody here reads.
ROOTS = ["python3.11-minimal", "libpython3.11-stdlib", "libstdc++6"]
SKIP = {"debconf", "debconf-2.0", "tzdata", "media-types", "mime-support", "perl-base", "dpkg",
        "install-info", "libc-bin", "readline-common"}
# The guest path of the wheels inside the sysroot, and of the script each process runs.
SITE = "/opt/peers/site"
SCRIPT = "/opt/peers/infer.py"
RUNS = (2, 12)
# One core of each emulated kind, as Linux describes it (qemu's MIDR for -cpu NAME).
CORES = {
    "cortex-a72": {"midr": 0x410FD083, "part": "0xd08", "variant": "0x0", "revision": 3,
                   "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"},
    "cortex-a76": {"midr": 0x414FD0B1, "part": "0xd0b", "variant": "0x4", "revision": 1,
                   "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                               "asimdrdm lrcpc dcpop asimddp"},
}
INFER = '''
import sys
import numpy as np

model, runs = sys.argv[1], int(sys.argv[2])
shape = [int(d) for d in sys.argv[3].split("x")]
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
if model.endswith(".tflite"):
    from ai_edge_litert.interpreter import Interpreter

    # LiteRT applies its default delegate, XNNPACK, to the whole graph.
    interpreter = Interpreter(model_path=model, num_threads=1)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    for _ in range(runs + 1):
        interpreter.set_tensor(index, x)
        interpreter.invoke()
    print("litert runs", runs)
else:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(runs + 1):
        session.run(None, {name: x})
    print("onnxruntime", ort.__version__, "runs", runs)
'''


def packages_index() -> dict[str, dict[str, str]]:
    """Debian's arm64 `Packages` index of SUITE/main, by package name (cached)."""
    path = CACHE / f"Packages-{SUITE}-arm64.xz"
    if not path.exists():
        fetch(f"{DEBIAN}/dists/{SUITE}/main/binary-arm64/Packages.xz", path, None)
    index: dict[str, dict[str, str]] = {}
    for block in lzma.decompress(path.read_bytes()).decode().split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line.startswith(" "):
                fields[key] += "\n" + line
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            index[fields["Package"]] = fields
    return index


def closure(index: dict[str, dict[str, str]], roots: list[str]) -> list[str]:
    """`roots` and everything they depend on (first alternative of each dependency), minus SKIP."""
    provided = {}
    for name, fields in index.items():
        for item in fields.get("Provides", "").split(","):
            if item.strip():
                provided.setdefault(item.strip().split(" ")[0], name)
    todo, seen = list(roots), set()
    while todo:
        name = todo.pop()
        if name in SKIP or name in seen:
            continue
        if name not in index:
            if name not in provided:
                sys.exit(f"arm_peers: {name}: not in Debian {SUITE}'s arm64 index")
            name = provided[name]
        seen.add(name)
        for field in ("Pre-Depends", "Depends"):
            for dep in index[name].get(field, "").split(","):
                if dep.strip():
                    todo.append(dep.split("|")[0].strip().split(" ")[0].split(":")[0])
    return sorted(seen)


def fetch(url: str, path: Path, sha256: str | None) -> None:
    """Download `url` to `path` (atomically), checking its SHA-256 when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=120) as response:
        data = response.read()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        sys.exit(f"arm_peers: {url}: SHA-256 differs from the index's {sha256}")
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def sysroot() -> Path:
    """The arm64 sysroot with CPython and the peers' wheels; built once, reused while its inputs
    (this file's package list, the wheels' pins) are unchanged."""
    requirements = ROOT / "tools" / "requirements-arm-peers.txt"
    key = hashlib.sha256((SUITE + " ".join(ROOTS) + " ".join(sorted(SKIP))).encode()
                         + requirements.read_bytes()).hexdigest()[:16]
    root = CACHE / f"sysroot-{key}"
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    index = packages_index()
    names = closure(index, ROOTS)
    print(f"arm_peers: building {root}: {len(names)} Debian {SUITE} arm64 packages, "
          f"{sum(int(index[n]['Size']) for n in names) / 1e6:.1f} MB", file=sys.stderr)
    for name in names:
        fields = index[name]
        deb = CACHE / "debs" / Path(fields["Filename"]).name
        if not deb.exists():
            fetch(f"{DEBIAN}/{fields['Filename']}", deb, fields["SHA256"])
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    # Debian 12 is merged-/usr: the loader and libraries are looked up under /lib.
    for link in ("lib", "bin", "sbin"):
        if not (root / link).exists():
            (root / link).symlink_to(f"usr/{link}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--only-binary=:all:",
                    "--implementation", "cp", "--python-version", "3.11",
                    "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_27_aarch64",
                    "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_17_aarch64",
                    "--target", str(root / SITE.lstrip("/")), "-r", str(requirements)], check=True)
    (root / ".complete").write_text(" ".join(names) + "\n")
    return root


def describe_core(root: Path, cpu: str) -> None:
    """/proc/cpuinfo and /sys/devices/system/cpu under the sysroot: one core of kind `cpu`."""
    core = CORES[cpu]
    proc = root / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "cpuinfo").write_text(
        f"processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: {core['features']}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: {core['variant']}\nCPU part\t: {core['part']}\n"
        f"CPU revision\t: {core['revision']}\n\n")
    cpus = root / "sys" / "devices" / "system" / "cpu"
    (cpus / "cpu0" / "regs" / "identification").mkdir(parents=True, exist_ok=True)
    for name in ("possible", "present", "online"):
        (cpus / name).write_text("0\n")
    (cpus / "cpu0" / "regs" / "identification" / "midr_el1").write_text(f"0x{core['midr']:016x}\n")


def peer_per_run(root: Path, cpu: str, model: Path, shape: str) -> float:
    """A peer's guest instructions per inference of `model` on one core of kind `cpu`:
    onnxruntime for an .onnx file, LiteRT (XNNPACK) for a .tflite one (`shape` NHWC then)."""
    describe_core(root, cpu)
    (root / SCRIPT.lstrip("/")).write_text(INFER)
    python = root / "usr" / "bin" / "python3.11"
    env = {"PYTHONPATH": SITE, "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "OMP_NUM_THREADS": "1"}
    counts = {n: qemu_cost.counted(["-L", str(root), str(python), SCRIPT, str(model.resolve()), str(n), shape],
                                   cpu, qemu_cost.plugin(), env, "arm_peers")[0] for n in RUNS}
    return (counts[RUNS[1]] - counts[RUNS[0]]) / (RUNS[1] - RUNS[0])


def tflite_venv() -> Path:
    """The converter's venv (tools/requirements-tflite.txt), made once."""
    venv = Path(os.environ.get("REIDCAM_TFLITE_VENV", CACHE.parent / "venv-tflite"))
    requirements = ROOT / "tools" / "requirements-tflite.txt"
    stamp = venv / ".requirements.sha256"
    want = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if not (venv / "bin" / "python").exists() or not stamp.exists() or stamp.read_text() != want:
        print(f"arm_peers: installing the TFLite converter into {venv} (~2.6 GB)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", str(requirements)],
                       check=True)
        stamp.write_text(want)
    return venv


def crops(shared: Path, height: int, width: int, count: int):
    """`count` CUHK03 training crops (not the evaluation split) as NHWC float32 in [0, 1]."""
    import numpy as np
    from PIL import Image

    files = sorted((shared / "data" / "cuhk03-train" / "bounding_box_train").glob("*.jpg"))
    files = files[:: max(1, len(files) // count)][:count]
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((width, height), Image.BILINEAR),
                                dtype=np.float32) / 255 for f in files])


def litert_model(shared: Path, model: Path, precision: str, size: tuple[int, int] | None = None) -> Path:
    """`model` as a .tflite by onnx2tf: float32, or int8 ("integer_quant": int8 weights and
    activations, float input and output) calibrated on 64 CUHK03 training crops through the
    model's own normalisation. `size` (height, width) fixes the input of a free-size model (our
    default detector; float only). Cached under CACHE/tflite; derived from ../shared, never in
    the repo."""
    import numpy as np
    import tomllib

    out = CACHE / "tflite" / (model.stem if size is None else f"{model.stem}_{size[1]}x{size[0]}")
    suffix = "float32" if precision == "float" else "integer_quant"
    made = out / f"{model.stem}_{suffix}.tflite"
    if made.exists():
        return made
    venv = tflite_venv()
    if size is None:
        manifest = tomllib.loads(manifest_of(model).read_text())["input"]
        height, width = manifest["height"], manifest["width"]
    else:
        if precision != "float":
            sys.exit("arm_peers: LiteRT int8 conversions are of the embedders only")
        (height, width), manifest = size, {}
    with tempfile.TemporaryDirectory() as tmp:
        # onnx2tf checks its conversion on sample pictures it downloads unless this file is in
        # its working directory (there is no internet here): training crops instead.
        np.save(Path(tmp) / "calibration_image_sample_data_20x128x128x3_float32.npy", crops(shared, 128, 128, 20))
        # onnx2tf writes the model back to its input path with operator names of its own (and
        # simplified): it gets a copy, never the shared file or ours.
        copy = Path(tmp) / model.name
        shutil.copyfile(model, copy)
        cmd = [str(venv / "bin" / "onnx2tf"), "-i", str(copy), "-o", str(out), "-b", "1", "-n"]
        if size is not None:
            cmd += ["-ois", f"{input_name(model)}:1,3,{height},{width}"]
        if precision == "int8":
            calibration = Path(tmp) / "calibration.npy"
            np.save(calibration, crops(shared, height, width, 64))
            mean = "[[[[" + ",".join(str(v) for v in manifest["mean"]) + "]]]]"
            std = "[[[[" + ",".join(str(v) for v in manifest["std"]) + "]]]]"
            cmd += ["-oiqt", "-qt", "per-channel", "-cind", manifest.get("name", "input"), str(calibration), mean, std]
        env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not made.exists():
        sys.exit(f"arm_peers: onnx2tf failed on {model} ({precision}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return made


def reidcam_per_embedding(binary: Path, cpu: str, model: Path, env: dict[str, str] | None = None) -> float:
    lib = qemu_cost.plugin()
    manifest = manifest_of(model)
    counts = {n: qemu_cost.instructions(binary, lib, model, manifest, n, "reidcam", cpu, env)
              for n in qemu_cost.RUNS}
    return (counts[qemu_cost.RUNS[1]] - counts[qemu_cost.RUNS[0]]) / (qemu_cost.RUNS[1] - qemu_cost.RUNS[0])


def reidcam_per_detection(binary: Path, cpu: str, model: Path, size: str) -> tuple[float, float]:
    """`reidcam detect`'s guest instructions per picture of exactly the network's input size
    (PNG decoding, letterbox, network, box decoding and NMS), and the same picture through our
    default detector (whose input size is free) at a 32×32 input (the same decoding, a letterbox
    to 32×32, a network 0.6% the size): what is not the network, to take off for a comparison
    with a peer that runs the network alone."""
    import numpy as np
    from PIL import Image

    width, height = (int(v) for v in size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "frame.png"
        y, x = np.mgrid[0:height, 0:width]
        pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], 2)
        pixels = pixels + np.random.default_rng(0).integers(0, 30, (height, width, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(image)
        lib = qemu_cost.plugin()
        per = {}
        for network, at in ((model, size), (ROOT / "models" / "detector.onnx", "32x32")):
            counts = {n: qemu_cost.detect_instructions(binary, lib, image, n, cpu, network, at) for n in (1, 3)}
            per[at] = (counts[3] - counts[1]) / 2
    return per[size], per["32x32"]


def input_name(model: Path) -> str:
    import onnx

    return onnx.load(model, load_external_data=False).graph.input[0].name


def input_shape(model: Path) -> str:
    """The model's input shape as NxCxHxW, a symbolic batch taken as 1."""
    import onnx

    dims = onnx.load(model, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return "x".join(str(d.dim_value or 1) for d in dims)


def manifest_of(model: Path) -> Path:
    """The manifest beside a model, or the reference manifest of a shared one."""
    beside = model.with_suffix(".toml")
    if beside.exists():
        return beside
    reference_manifest = ROOT / "models" / "reference" / f"{model.stem.removesuffix('_int8')}.toml"
    if reference_manifest.exists():
        return reference_manifest
    sys.exit(f"arm_peers: {model}: no manifest beside it nor in models/reference/")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, required=True, help="aarch64 reidcam")
    ap.add_argument("--cpu", action="append", choices=sorted(CORES), help="emulated cores (default: both)")
    ap.add_argument("--int8-dir", type=Path,
                    help="where tools/int8_check.py --out left osnet_x0_25_msmt17_int8.onnx (else its float row only)")
    ap.add_argument("--detectors", action="store_true",
                    help="also the detectors: models/detector.onnx at 736x416 and the shared YOLOX-Nano at 416x416")
    ap.add_argument("--litert", action="store_true",
                    help="also LiteRT with XNNPACK on .tflite conversions of the embedders (float and int8) and "
                         "of the detectors (float) (onnx2tf in its own venv)")
    ap.add_argument("--detectors-only", action="store_true", help="the detectors' rows only (implies --detectors)")
    ap.add_argument("--json", type=Path, help="write the table here too")
    args = ap.parse_args()
    shared = reference.require_shared("arm_peers")
    if shared is None:
        return 0
    cpus = args.cpu or sorted(CORES)
    embedders = [("osnet_x0_25_msmt17", "float", shared / "models" / "osnet_x0_25_msmt17.onnx")]
    if args.int8_dir is not None:
        embedders.append(("osnet_x0_25_msmt17", "int8", args.int8_dir / "osnet_x0_25_msmt17_int8.onnx"))
    embedders += [("default", "float", ROOT / "models" / "default.onnx"),
                  ("default", "int8", ROOT / "models" / "default_int8.onnx")]
    root = sysroot()
    rows = []
    for cpu in cpus:
        for name, precision, model in [] if args.detectors_only else embedders:
            shape = input_shape(model)
            row = {"cpu": cpu, "model": name, "precision": precision, "input": shape,
                   "onnxruntime": peer_per_run(root, cpu, model, shape),
                   "reidcam": reidcam_per_embedding(args.binary, cpu, model)}
            if args.litert:
                float_model = model.with_name(model.name.replace("_int8.onnx", ".onnx"))
                tflite = litert_model(shared, float_model, precision)
                n, c, h, w = shape.split("x")
                row["litert"] = peer_per_run(root, cpu, tflite, f"{n}x{h}x{w}x{c}")
            if precision == "int8" and cpu == "cortex-a72":
                row["reidcam_smlal"] = reidcam_per_embedding(args.binary, cpu, model,
                                                             {"REIDCAM_INT8_DOT": "neon-smlal"})
            rows.append(row)
            report(row)
        if args.detectors or args.detectors_only:
            for name, model, size in (("detector", ROOT / "models" / "detector.onnx", "736x416"),
                                      ("yolox_nano", shared / "models" / "yolox_nano.onnx", "416x416")):
                width, height = size.split("x")
                frame, rest = reidcam_per_detection(args.binary, cpu, model, size)
                row = {"cpu": cpu, "model": name, "precision": "float", "input": f"1x3x{height}x{width}",
                       "onnxruntime": peer_per_run(root, cpu, model, f"1x3x{height}x{width}"),
                       "reidcam": frame - rest, "reidcam_frame": frame}
                if args.litert:
                    tflite = litert_model(shared, model, "float", (int(height), int(width)))
                    row["litert"] = peer_per_run(root, cpu, tflite, f"1x{height}x{width}x3")
                rows.append(row)
                report(row)
    version = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    if args.json is not None:
        args.json.write_text(json.dumps({"qemu": version, "runs": RUNS, "rows": rows}, indent=2) + "\n")
    print(f"arm_peers: M guest instructions per inference, one thread ({version})")
    print("| cpu | model | precision | onnxruntime | LiteRT (XNNPACK) | reidcam | reidcam / best peer |")
    print("|---|---|---|---:|---:|---:|---:|")
    for row in rows:
        ours = f"{row['reidcam'] / 1e6:.2f}"
        if "reidcam_smlal" in row:
            ours += f" ({row['reidcam_smlal'] / 1e6:.2f} smlal)"
        litert = f"{row['litert'] / 1e6:.2f}" if "litert" in row else "–"
        best = min(row["onnxruntime"], row.get("litert", float("inf")))
        print(f"| {row['cpu']} | {row['model']} | {row['precision']} | {row['onnxruntime'] / 1e6:.2f} | "
              f"{litert} | {ours} | {row['reidcam'] / best:.3f} |")
    return 0


def report(row: dict) -> None:
    litert = f", LiteRT {row['litert'] / 1e6:.2f} M" if "litert" in row else ""
    print(f"arm_peers: {row['cpu']} {row['model']} {row['precision']}: onnxruntime "
          f"{row['onnxruntime'] / 1e6:.2f} M{litert}, reidcam {row['reidcam'] / 1e6:.2f} M per inference", flush=True)


if __name__ == "__main__":
    sys.exit(main())
