#!/usr/bin/env python3
"""End-to-end test on a real V4L2 device: boots Debian's arm64 kernel under qemu-system-aarch64
(cortex-a72, from an initramfs with busybox), loads the `vivid` driver, and runs the aarch64
`reidcam capture` inside the guest against /dev/video0 in several pixel formats. The host shares
a directory over 9p (binary, model, job script in; results out) and checks what comes back.

    tools/.venv/bin/python tools/vivid_e2e.py --binary target/aarch64-unknown-linux-gnu/release/reidcam \
        [--frames 30] [--formats YUYV,NV12] [--size 640x480] [--keep DIR] [--record-fixtures DIR]

Guest assets (kernel, modules, busybox: Debian arm64 packages, fetched with `apt-get download`)
are cached in ~/.cache/reidcam/guest (REIDCAM_GUEST_CACHE). Fails loudly if the guest does not
boot, the device is missing, or the results are wrong. Needs tools/setup-cross.sh.
"""
import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import reference

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("REIDCAM_GUEST_CACHE", Path.home() / ".cache" / "reidcam" / "guest"))
KERNEL_META = "linux-image-arm64:arm64"
BUSYBOX = "busybox-static:arm64"
# vivid: one device, one video capture node, one webcam input.
VIVID_ARGS = "n_devs=1 node_types=0x1 num_inputs=1 input_types=0x0"
MODULE_ROOTS = ["vivid", "9p", "9pnet_virtio", "virtio_pci"]
EXIT_MARKER = "REIDCAM-GUEST-EXIT"
# Cosine between the embeddings of the same scene captured as YUYV and NV12 (4:2:2 vs 4:2:0 chroma).
MIN_CROSS_FORMAT_COSINE = 0.99


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def ensure_arm64_packages() -> str:
    """Makes `apt-get download` of arm64 packages possible; returns the kernel package name."""
    if "arm64" not in run(["dpkg", "--print-foreign-architectures"]).split():
        run(["dpkg", "--add-architecture", "arm64"])
        run(["apt-get", "update", "-q"])
    try:
        depends = run(["apt-cache", "depends", KERNEL_META])
    except subprocess.CalledProcessError:
        run(["apt-get", "update", "-q"])
        depends = run(["apt-cache", "depends", KERNEL_META])
    for line in depends.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split()[1]
    sys.exit(f"vivid_e2e: cannot find the kernel package behind {KERNEL_META}:\n{depends}")


def extract_deb(deb: Path, dest: Path, members: list[str]) -> None:
    """Extracts the members (tar wildcards) of a .deb's filesystem into dest."""
    tar = subprocess.Popen(["tar", "-x", "-C", str(dest), "--wildcards", *members], stdin=subprocess.PIPE)
    subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, stdout=tar.stdin)
    tar.stdin.close()
    if tar.wait() != 0:
        sys.exit(f"vivid_e2e: extracting {deb.name} failed")


def guest_assets() -> tuple[Path, Path, list[str]]:
    """Kernel image, module tree and module load order (relative paths), cached."""
    kernel_pkg = ensure_arm64_packages()
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for pkg in (kernel_pkg, BUSYBOX):
        stem = pkg.split(":")[0]
        if not list(debs.glob(f"{stem}_*.deb")):
            run(["apt-get", "download", pkg], cwd=debs)
    tree = CACHE / f"root-{kernel_pkg.split(':')[0]}"
    if not (tree / ".complete").exists():
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        kernel_deb = next(debs.glob(f"{kernel_pkg.split(':')[0]}_*.deb"))
        wanted = ["./boot/vmlinuz-*"] + [f"./lib/modules/*/kernel/{d}/*" for d in
                                          ("drivers/media", "drivers/virtio", "net/9p", "fs/9p", "fs/netfs",
                                           "fs/fscache")] + ["./lib/modules/*/modules.*"]
        extract_deb(kernel_deb, tree, wanted)
        bb = tree / "busybox"
        bb.mkdir()
        extract_deb(next(debs.glob("busybox-static_*.deb")), bb, ["./bin/busybox"])
        kver = next((tree / "lib" / "modules").iterdir()).name
        run(["depmod", "-b", str(tree), kver])
        (tree / ".complete").write_text(kver)
    kver = (tree / ".complete").read_text()
    order: list[str] = []
    for name in MODULE_ROOTS:
        for line in run(["modprobe", "-d", str(tree), "-S", kver, "--show-depends", name]).splitlines():
            if line.startswith("insmod "):
                rel = str(Path(line.split()[1]).relative_to(tree / "lib" / "modules" / kver))
                if rel not in order:
                    order.append(rel)
    vmlinuz = next((tree / "boot").glob("vmlinuz-*"))
    return vmlinuz, tree / "lib" / "modules" / kver, order


def build_initramfs(modules_dir: Path, order: list[str], out: Path) -> None:
    """busybox + the modules in load order + /init, as a gzip'd newc cpio."""
    with tempfile.TemporaryDirectory() as staging:
        s = Path(staging)
        for d in ("bin", "proc", "sys", "dev", "mnt", "modules"):
            (s / d).mkdir()
        shutil.copy(modules_dir.parent.parent.parent / "busybox" / "bin" / "busybox", s / "bin" / "busybox")
        (s / "bin" / "sh").symlink_to("busybox")
        lines = []
        for rel in order:
            name = Path(rel).name
            shutil.copy(modules_dir / rel, s / "modules" / name)
            lines.append(f"{name} {VIVID_ARGS}" if name == "vivid.ko" else name)
        (s / "modules.order").write_text("\n".join(lines) + "\n")
        shutil.copy(ROOT / "tools" / "guest" / "init", s / "init")
        (s / "init").chmod(0o755)
        files = subprocess.run(["find", "."], cwd=s, check=True, capture_output=True).stdout
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=s, input=files, check=True,
                              capture_output=True).stdout
        out.write_bytes(gzip.compress(cpio, 6))


def job_script(formats: list[str], frames: int, size: str) -> str:
    lines = ["set -e", "cd /mnt", "echo guest: $(cat /proc/cpuinfo | grep -m1 'CPU part')"]
    for fmt in formats:
        lines.append(
            f"./reidcam capture --device /dev/video0 --format {fmt} --size {size} --fps 30 --frames {frames} "
            f"--control 'OSD Text Mode=2' --model model.onnx --manifest model.toml "
            f"--save-raw out/raw-{fmt}.bin --json > out/capture-{fmt}.json")
    # The daemon on the real device: a whole-frame zone, a few frames, events and gallery to out/.
    lines.append(f"./reidcam run --config run.toml --source /dev/video0 --max-frames 12 "
                 f"--summary-json out/run.json 2> out/run.log")
    # Hot-unplug: unbind the vivid device while the daemon streams from it, bind it again; the
    # daemon must reopen it and carry on to its frame limit.
    lines.append(UNPLUG_JOB)
    # The on-device latency check, with the emulated board's profile.
    lines.append("./reidcam bench --board board.toml --model model.onnx --manifest model.toml "
                 "--runs 3 --seconds 0 --json > out/bench.json")
    return "\n".join(lines) + "\n"


# `reidcam run` in the guest: the daemon against /dev/video0 (vivid's test pattern is the "person").
RUN_CONFIG = """camera = "vivid"
[source]
format = "YUYV"
width = {size[0]}
height = {size[1]}
[source.controls]
"OSD Text Mode" = 2
[detector]
kind = "zones"
[detector.zones]
require_motion = false
[model]
path = "model.onnx"
manifest = "model.toml"
[gallery]
path = "out/gallery.bin"
[tracker]
# every other frame: 6 crops in the 12-frame run, past quality.min_crops (4) before a decision
embed_every = 2
[events]
output = "out/run-events.jsonl"
"""


UNPLUG_JOB = """mount -t debugfs none /sys/kernel/debug
./reidcam run --config run.toml --source /dev/video0 --max-frames 40 --gallery '' --board board.toml \\
    --events out/unplug-events.jsonl --summary-json out/unplug.json 2> out/unplug.log &
pid=$!
i=0
while ! grep -q '"enter"' out/unplug-events.jsonl 2>/dev/null && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
grep reidcam /sys/kernel/debug/gpio > out/gpio-before.txt || true
dev=$(basename /sys/bus/platform/drivers/vivid/vivid.*)
echo "unplug: unbinding $dev after $i polls"
echo "$dev" > /sys/bus/platform/drivers/vivid/unbind
# The frame in progress (about a second emulated) ends before the daemon sees the loss: wait for
# its first "reopening" line rather than a fixed time, then read the LED.
i=0
while ! grep -q 'reopening in' out/unplug.log 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
sleep 0.3
grep reidcam /sys/kernel/debug/gpio > out/gpio-lost.txt || true
echo "$dev" > /sys/bus/platform/drivers/vivid/bind
echo "unplug: bound $dev again"
sleep 5
grep reidcam /sys/kernel/debug/gpio > out/gpio-after.txt || true
wait $pid"""


def check_unplug(out: Path) -> list[str]:
    """The daemon survived the device going away and coming back."""
    if not (out / "unplug.json").exists():
        log = (out / "unplug.log").read_text(errors="replace") if (out / "unplug.log").exists() else ""
        return [f"unplug: no summary from the guest; log: {log[-1500:]}"]
    summary = json.loads((out / "unplug.json").read_text())
    log = (out / "unplug.log").read_text(errors="replace")
    lost = [line for line in log.splitlines() if "reopening in" in line]
    print(f"unplug: {summary['frames']} frames, camera reopened {summary['camera_reopens']} time(s) "
          f"after {len(lost)} failed attempt(s); first: {lost[0][-120:] if lost else '-'}")
    problems = []
    # The status LED (PL061 line 0 of the virt machine, requested through linux-embedded-hal): off
    # while frames flow, steady on while the camera is lost, off again after the reopen.
    gpio, led = {}, {}
    for stage in ("before", "lost", "after"):
        path = out / f"gpio-{stage}.txt"
        gpio[stage] = path.read_text() if path.exists() else ""
        outs = [line.split()[-1] for line in gpio[stage].splitlines() if " out " in line]
        led[stage] = outs[0] if outs else "missing"
    print(f"unplug: status LED {led['before']} → {led['lost']} while lost → {led['after']} after the reopen; "
          f"GPIO lines held by reidcam: {gpio['before'].strip() or '-'}")
    if (led["before"], led["lost"], led["after"]) != ("lo", "hi", "lo"):
        problems.append(f"unplug: status LED levels {led}, expected lo → hi → lo")
    if summary["camera_reopens"] < 1 or summary["frames"] != 40 or summary["ended_by"] != "frame limit":
        problems.append(f"unplug: expected a reopen and 40 frames, got {summary['camera_reopens']} reopen(s), "
                        f"{summary['frames']} frames, ended by {summary['ended_by']}; log: {log[-1500:]}")
    return problems


def check_run(out: Path) -> list[str]:
    """The daemon's results from the guest: frames, events, a saved gallery."""
    if not (out / "run.json").exists():
        log = (out / "run.log").read_text(errors="replace") if (out / "run.log").exists() else ""
        return [f"reidcam run: no summary from the guest; log: {log[-1500:]}"]
    summary = json.loads((out / "run.json").read_text())
    events = [json.loads(line) for line in (out / "run-events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    print(f"reidcam run on /dev/video0: {summary['frames']} frames, {summary['counts']['tracks']} track(s), "
          f"{summary['counts']['crops_embedded']} crops embedded, events {kinds}, "
          f"{summary['per_frame_ms']['total']:.0f} ms/frame (emulated), ended by {summary['ended_by']}")
    problems = []
    if summary["frames"] != 12 or summary["ended_by"] != "frame limit":
        problems.append(f"reidcam run: {summary['frames']} frames, ended by {summary['ended_by']}")
    if kinds[:1] != ["enter"] or kinds[-1:] != ["leave"] or any(e["camera"] != "vivid" for e in events):
        problems.append(f"reidcam run: expected enter … leave events from camera vivid, got {kinds}")
    if not (out / "gallery.bin").exists():
        problems.append("reidcam run: the gallery was not saved")
    return problems


def boot(vmlinuz: Path, initramfs: Path, shared: Path, timeout: float, append: str = "",
         memory_mb: int = 1024, tool: str = "vivid_e2e") -> tuple[int | None, str, float]:
    """Boots the guest (2 cortex-a72 cores, no network, `shared` as 9p tag host0) to its power-off;
    returns the exit status it printed after EXIT_MARKER (None: none), its console and the time."""
    cmd = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", str(memory_mb),
           "-nographic", "-nic", "none", "-no-reboot", "-kernel", str(vmlinuz), "-initrd", str(initramfs),
           "-append", f"console=ttyAMA0 panic=-1 quiet {append}".strip(),
           "-virtfs", f"local,path={shared},mount_tag=host0,security_model=none"]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
        console = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")
        console = out.decode(errors="replace") if isinstance(out, bytes) else out
        print(console[-3000:])
        sys.exit(f"{tool}: FAILED: the guest did not finish within {timeout:.0f} s")
    seconds = time.monotonic() - started
    status = None
    for line in console.splitlines():
        if line.startswith(EXIT_MARKER):
            status = int(line.split()[1])
    return status, console, seconds


def cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = sum(x * x for x in a) ** 0.5
    nb = sum(y * y for y in b) ** 0.5
    return dot / (na * nb)


def check(results: dict, frames: int) -> list[str]:
    problems = []
    for fmt, r in results.items():
        if r["format"]["pixel_format"] != fmt:
            problems.append(f"{fmt}: the driver gave {r['format']['pixel_format']}")
        if r["frames"] < frames:
            problems.append(f"{fmt}: {r['frames']} frames captured, expected ≥ {frames}")
        if r["embedded"] != r["frames"]:
            problems.append(f"{fmt}: {r['embedded']} embeddings for {r['frames']} frames")
        seqs = r["sequence_first_last"]
        if seqs[1] - seqs[0] + 1 < r["frames"]:
            problems.append(f"{fmt}: sequence numbers {seqs} do not cover {r['frames']} frames")
        events = r["events"]
        if events.get("new") != 1 or events.get("known") != r["frames"] - 1:
            problems.append(f"{fmt}: a static scene should be one new identity then known: {events}")
    fmts = list(results)
    for i in range(len(fmts)):
        for j in range(i + 1, len(fmts)):
            c = cosine(results[fmts[i]]["first_embedding"], results[fmts[j]]["first_embedding"])
            print(f"cosine {fmts[i]} vs {fmts[j]} (first frame, whole-frame zone): {c:.5f}")
            if c < MIN_CROSS_FORMAT_COSINE:
                problems.append(f"{fmts[i]} vs {fmts[j]}: cosine {c:.5f} < {MIN_CROSS_FORMAT_COSINE}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, required=True, help="aarch64 reidcam (static)")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--formats", default="YUYV,NV12")
    ap.add_argument("--size", default="320x180")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--keep", type=Path, help="copy the guest's output directory here")
    ap.add_argument("--record-fixtures", type=Path, metavar="DIR",
                    help="write the first raw frame of each format and its layout as conversion fixtures")
    args = ap.parse_args()
    shared_data = reference.require_shared("vivid_e2e")
    if shared_data is None:
        return 0
    if not args.binary.is_file():
        sys.exit(f"vivid_e2e: {args.binary}: no such binary (cargo build --release --target aarch64-unknown-linux-gnu)")
    formats = args.formats.split(",")

    vmlinuz, modules_dir, order = guest_assets()
    initramfs = CACHE / f"initramfs-{modules_dir.name}.cpio.gz"
    init_src = ROOT / "tools" / "guest" / "init"
    if not initramfs.exists() or initramfs.stat().st_mtime < init_src.stat().st_mtime:
        build_initramfs(modules_dir, order, initramfs)
    print(f"guest: kernel {modules_dir.name}, {len(order)} modules, initramfs {initramfs.stat().st_size // 1024} KiB")

    with tempfile.TemporaryDirectory(prefix="reidcam-vivid-") as tmp:
        shared = Path(tmp)
        (shared / "out").mkdir()
        shutil.copy(args.binary, shared / "reidcam")
        model = shared_data / "models" / "osnet_x0_25_msmt17.onnx"
        shutil.copy(model, shared / "model.onnx")
        shutil.copy(ROOT / "models" / "reference" / "osnet_x0_25_msmt17.toml", shared / "model.toml")
        shutil.copy(ROOT / "board" / "qemu-virt.toml", shared / "board.toml")
        (shared / "job.sh").write_text(job_script(formats, args.frames, args.size))
        (shared / "run.toml").write_text(RUN_CONFIG.format(size=args.size.split("x")))
        status, console, seconds = boot(vmlinuz, initramfs, shared, args.timeout)
        log = (shared / "out" / "job.log")
        job_log = log.read_text(errors="replace") if log.exists() else "(no job log)"
        if args.keep:
            shutil.copytree(shared / "out", args.keep, dirs_exist_ok=True)
            (args.keep / "console.log").write_text(console)
        if status is None:
            print(console[-3000:])
            sys.exit(f"vivid_e2e: FAILED: the guest never reported an exit status ({seconds:.1f} s)")
        if status != 0:
            print(console[-2000:])
            print(job_log[-3000:])
            sys.exit(f"vivid_e2e: FAILED: the guest job exited with {status}")
        results = {}
        for fmt in formats:
            path = shared / "out" / f"capture-{fmt}.json"
            if not path.exists():
                sys.exit(f"vivid_e2e: FAILED: {fmt}: no results from the guest")
            results[fmt] = json.loads(path.read_text())
        bench = json.loads((shared / "out" / "bench.json").read_text())
        out_dir = Path(tempfile.mkdtemp(prefix="reidcam-vivid-out-"))
        shutil.copytree(shared / "out", out_dir, dirs_exist_ok=True)
        if args.record_fixtures:
            args.record_fixtures.mkdir(parents=True, exist_ok=True)
            for fmt in formats:
                shutil.copy(shared / "out" / f"raw-{fmt}.bin", args.record_fixtures / f"{fmt}.raw")
                layout = dict(results[fmt]["format"])
                layout["source"] = "vivid (Linux 6.1 arm64 under qemu-system-aarch64), webcam input, " \
                                   "75% colour bars, OSD text off; recorded by tools/vivid_e2e.py"
                (args.record_fixtures / f"{fmt}.json").write_text(json.dumps(layout, indent=2) + "\n")
    for fmt, r in results.items():
        f = r["format"]
        print(f"{fmt}: {f['width']}x{f['height']} {f['pixel_format']} ({f['bytes_per_line']} bytes/line), "
              f"{r['frames']} frames, {r['embedded']} embedded, events {r['events']}, "
              f"{r['seconds']:.1f} s in the guest")
    problems = check(results, args.frames) + check_run(out_dir) + check_unplug(out_dir)
    lat = bench["latency_per_crop_ms"]
    print(f"bench --board qemu-virt in the guest: p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms per crop "
          f"(emulated), load {bench['load_ms']:.0f} ms; budget exceeded: {bench['budget']['exceeded'] or 'no'}")
    print(f"guest boot + capture: {seconds:.1f} s")
    return verdict("vivid_e2e", problems)


def verdict(tool: str, problems: list[str]) -> int:
    """Prints each problem and the verdict; the exit status."""
    for p in problems:
        print(f"FAILED: {p}")
    print(f"{tool}: " + ("FAILED" if problems else "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
