#!/usr/bin/env python3
"""The shipped systemd unit under a real systemd: boots Debian's arm64 kernel under
qemu-system-aarch64 (cortex-a72) with systemd as PID 1 (Debian bookworm's systemd, unpacked from
its arm64 packages into the initramfs), and runs `board/systemd/reidcam.service` — unchanged,
with every sandboxing line — on a real V4L2 device (vivid) and the virt machine's PL061 GPIO,
as an operator would: on a stock Debian system without board I/O (the unit alone); on a board whose
GPIO chips belong to group `gpio` with `board/systemd/gpio.conf` — install, start (Type=notify:
READY), reload (SIGHUP), stop (gallery saved); then with `[http]` on and
`board/systemd/network.conf` as a drop-in.

    tools/.venv/bin/python tools/systemd_e2e.py --binary target/aarch64-unknown-linux-gnu/release/reidcam [--keep DIR]

Checks: `systemd-analyze security` of the loaded unit at most MAX_EXPOSURE; frames and an
`enter` event without board I/O and without a `gpio` group; the daemon active
after start and after reload (same process, no restart), an `enter` event in the journal (frames
flowed through the sandbox), its GPIO lines held, a clean stop, the gallery saved 0600 in the
StateDirectory, `/healthz` answered with the network drop-in, and no system call refused by the
filter. Guest assets are cached with vivid_e2e's (~/.cache/reidcam/guest). Needs
tools/setup-cross.sh.
"""
import argparse
import gzip
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import reference
import vivid_e2e
from vivid_e2e import CACHE, ROOT, VIVID_ARGS, extract_deb, guest_assets, run

# The unit's score under the systemd it runs on (the test on the unit file asks the same of the
# host's systemd-analyze, offline).
MAX_EXPOSURE = 3.0
# Debian bookworm's systemd and what it links to (apt-cache depends --recurse, without the
# packaging tools: debconf, dpkg, tar, install-info, readline, newt).
PACKAGES = [
    "systemd", "libsystemd-shared", "libsystemd0", "libnss-systemd", "libc6", "libgcc-s1", "libacl1",
    "libapparmor1", "libargon2-1", "libaudit1", "libaudit-common", "libblkid1", "libbz2-1.0", "libcap-ng0",
    "libcap2", "libcrypt1", "libcryptsetup12", "libdevmapper1.02.1", "libfdisk1", "libffi8", "libgcrypt20",
    "libgpg-error0", "libip4tc2", "libjson-c5", "libkmod2", "liblz4-1", "liblzma5", "libmd0", "libmount1",
    "libp11-kit0", "libpam0g", "libpcre2-8-0", "libseccomp2", "libselinux1", "libsmartcols1", "libssl3",
    "libudev1", "libuuid1", "libzstd1", "zlib1g", "mount",
]
ALL_ARCH = {"libaudit-common"}
# busybox applets the job uses that the packages above do not bring.
APPLETS = ["sh", "sleep", "grep", "cat", "cp", "mkdir", "ls", "stat", "wget", "sed", "head", "tail", "chmod",
           "chgrp", "test", "wc", "sync", "insmod", "install", "tr", "cut", "find", "mknod", "ln", "rm", "awk", "date", "kill"]

# The daemon's configuration in the guest: board/systemd/reidcam.toml's layout, with vivid's test
# pattern as the person (a whole-frame zone) and the qemu-virt board's GPIO lines.
CONFIG = """camera = "entrance"
board = "/etc/reidcam/qemu-virt.toml"
[source]
path = "/dev/video0"
format = "YUYV"
width = 320
height = 180
[source.controls]
"OSD Text Mode" = 2
[detector]
kind = "zones"
[detector.zones]
require_motion = false
[model]
path = "/etc/reidcam/model.onnx"
manifest = "/etc/reidcam/model.toml"
threads = 1
[gallery]
path = "/var/lib/reidcam/gallery.bin"
budget = "1MiB"
recovery = "backup"
[tracker]
embed_every = 2
[events]
output = "-"
"""
HTTP = """[http]
enabled = true
listen = "127.0.0.1:8080"
"""

JOB = r"""
out=/mnt/out
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
step() { echo "job: $*"; }
show() { systemctl show reidcam -p ActiveState -p SubState -p MainPID -p NRestarts -p Result -p ExecMainStatus -p ExecMainCode -p StatusText; }
# This start's journal lines only (a reload keeps the invocation).
log() { journalctl -o cat --no-pager _SYSTEMD_INVOCATION_ID=$(systemctl show -p InvocationID --value reidcam); }
wait_enter() {
    i=0
    while systemctl -q is-active reidcam && ! log | grep -q '"event":"enter"' && [ $i -lt 300 ]; do
        sleep 1
        i=$((i + 1))
    done
    step "enter seen after $i polls"
}
# The camera as udev leaves it on any Debian system: group video, 0660.
chgrp video /dev/video*; chmod 660 /dev/video*
# Installed as the unit's header says.
cp /mnt/reidcam /usr/local/bin/reidcam && chmod 755 /usr/local/bin/reidcam
mkdir -p /etc/reidcam
cp /mnt/reidcam.toml /mnt/model.onnx /mnt/model.toml /mnt/qemu-virt.toml /etc/reidcam/
cp /mnt/reidcam.service /etc/systemd/system/reidcam.service
systemctl daemon-reload
systemd-analyze security reidcam.service --no-pager > $out/security.txt 2>&1

step "A: stock Debian (no gpio group), no board I/O: the unit alone"
grep -v '^board' /mnt/reidcam.toml > /etc/reidcam/reidcam.toml
systemctl start reidcam
echo "A start: exit $?"
wait_enter
show > $out/stock.txt
log > $out/reidcam-stock.log
systemctl stop reidcam

step "B: a board whose GPIO chips belong to group gpio (Raspberry Pi OS), LED and button, gpio.conf"
echo 'gpio:x:997:' >> /etc/group
chgrp gpio /dev/gpiochip*; chmod 660 /dev/gpiochip*
ls -l /dev/video0 /dev/gpiochip0
cp /mnt/reidcam.toml /etc/reidcam/reidcam.toml
mkdir -p /etc/systemd/system/reidcam.service.d
cp /mnt/gpio.conf /etc/systemd/system/reidcam.service.d/gpio.conf
systemctl daemon-reload
started=$(date +%s)
systemctl start reidcam
echo "start: exit $?, $(( $(date +%s) - started )) s"
show > $out/after-start.txt
wait_enter
grep reidcam /sys/kernel/debug/gpio > $out/gpio.txt
step "reload"
systemctl reload reidcam
echo "reload: exit $?"
# The daemon takes the SIGHUP between frames, says RELOADING=1, starts its new configuration
# (the model loaded again: seconds under emulation) and says READY=1: until then the unit is
# "reloading". A fixed pause of 5 s once read it mid-reload; wait for the journal's line and the
# unit's return to "active" (as many polls as `wait_enter`).
i=0
while { ! log | grep -q 'configuration reloaded' || \
        [ "$(systemctl show -p ActiveState --value reidcam)" = reloading ]; } && [ $i -lt 300 ]; do
    sleep 1
    i=$((i + 1))
done
step "reload done after $i polls"
show > $out/after-reload.txt
step "stop"
log > $out/reidcam.log
systemctl stop reidcam
show > $out/after-stop.txt
ls -ln /var/lib/private/reidcam/ > $out/state.txt 2>&1
stat -c '%a %u %s %n' /var/lib/private/reidcam/gallery.bin >> $out/state.txt 2>&1

step "C: with [http] and the network drop-in"
cat /mnt/http.toml >> /etc/reidcam/reidcam.toml
cp /mnt/network.conf /etc/systemd/system/reidcam.service.d/network.conf
systemctl daemon-reload
systemd-analyze security reidcam.service --no-pager > $out/security-network.txt 2>&1
systemctl start reidcam
echo "start: exit $?"
wget -q -O $out/healthz.json http://127.0.0.1:8080/healthz
echo "wget: exit $?"
show > $out/after-http.txt
log > $out/reidcam-http.log
systemctl stop reidcam
journalctl -b -o short-monotonic --no-pager > $out/journal.txt
"""


def root_fs(staging: Path, modules_dir: Path, order: list[str]) -> None:
    """systemd and its libraries, busybox, the modules, /etc, the e2e units; /init is systemd."""
    debs = CACHE / "debs"
    missing = [p for p in PACKAGES if not list(debs.glob(f"{p}_*_arm64.deb")) and not list(debs.glob(f"{p}_*_all.deb"))]
    if missing:
        # Architecture "all" packages have no ":arm64" candidate.
        run(["apt-get", "download", *[p if p in ALL_ARCH else f"{p}:arm64" for p in missing]], cwd=debs)
    for p in PACKAGES:
        deb = next(iter(sorted(debs.glob(f"{p}_*_arm64.deb")) or sorted(debs.glob(f"{p}_*_all.deb"))))
        extract_deb(deb, staging, [])
    bb = next(debs.glob("busybox-static_*.deb"))
    extract_deb(bb, staging, ["./bin/busybox"])
    for applet in APPLETS:
        for d in ("bin", "usr/bin", "sbin", "usr/sbin"):
            if (staging / d / applet).exists():
                break
        else:
            (staging / "bin" / applet).symlink_to("busybox")
    (staging / "init").symlink_to("lib/systemd/systemd")
    for d in ("proc", "sys", "dev", "run", "tmp", "mnt", "modules", "var/lib", "var/log/journal", "usr/local/bin",
              "etc/systemd/system", "root"):
        (staging / d).mkdir(parents=True, exist_ok=True)
    lines = []
    for rel in order:
        name = Path(rel).name
        shutil.copy(modules_dir / rel, staging / "modules" / name)
        lines.append(f"{name} {VIVID_ARGS}" if name == "vivid.ko" else name)
    (staging / "modules.order").write_text("\n".join(lines) + "\n")
    etc = staging / "etc"
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    # video: on every Debian system; the job adds gpio (Raspberry Pi OS has it) in its second part.
    (etc / "group").write_text("root:x:0:\nvideo:x:44:\nsystemd-journal:x:999:\n")
    (etc / "nsswitch.conf").write_text("passwd: files systemd\ngroup: files systemd\nshadow: files\n")
    (etc / "machine-id").write_text("")
    (etc / "hostname").write_text("reidcam-e2e\n")
    (etc / "os-release").write_text('NAME="Debian GNU/Linux"\nID=debian\nVERSION_ID="12"\n')
    e2e = staging / "e2e"
    e2e.mkdir()
    shutil.copy(ROOT / "tools" / "guest" / "systemd" / "start.sh", e2e / "start.sh")
    for unit in ("e2e.target", "e2e.service"):
        shutil.copy(ROOT / "tools" / "guest" / "systemd" / unit, etc / "systemd" / "system" / unit)
    # The libraries in the multiarch directories, found without an ld.so.cache.
    (etc / "ld.so.conf").write_text("/lib/aarch64-linux-gnu\n/usr/lib/aarch64-linux-gnu\n")
    subprocess.run(["ldconfig", "-r", str(staging)], check=False, capture_output=True)


def build_initramfs(modules_dir: Path, order: list[str], out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        s = Path(tmp)
        root_fs(s, modules_dir, order)
        files = subprocess.run(["find", "."], cwd=s, check=True, capture_output=True).stdout
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=s, input=files, check=True,
                              capture_output=True).stdout
        out.write_bytes(gzip.compress(cpio, 6))


def boot(vmlinuz: Path, initramfs: Path, shared: Path, timeout: float) -> tuple[int | None, str, float]:
    return vivid_e2e.boot(vmlinuz, initramfs, shared, timeout, memory_mb=1536, tool="systemd_e2e",
                          append="systemd.unit=e2e.target systemd.show_status=0 "
                                 "systemd.log_target=console systemd.log_level=warning")


def props(path: Path) -> dict:
    if not path.exists():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def exposure(path: Path) -> float | None:
    text = path.read_text(errors="replace") if path.exists() else ""
    m = re.search(r"Overall exposure level for reidcam\.service:\s*([0-9.]+)", text)
    return float(m.group(1)) if m else None


def check(out: Path) -> list[str]:
    problems = []
    read = lambda name: (out / name).read_text(errors="replace") if (out / name).exists() else ""  # noqa: E731
    for name in ("security.txt", "security-network.txt"):
        score = exposure(out / name)
        print(f"systemd-analyze security reidcam.service ({name}): {score}")
        if score is None or score > MAX_EXPOSURE:
            problems.append(f"{name}: exposure {score}, expected ≤ {MAX_EXPOSURE}: {read(name)[-800:]}")
    stock, start, reload, stop, http = (props(out / f) for f in ("stock.txt", "after-start.txt", "after-reload.txt",
                                                                  "after-stop.txt", "after-http.txt"))
    print(f"stock Debian, no board I/O: {stock}\nafter start: {start}\nafter reload: {reload}\n"
          f"after stop: {stop}\nwith http: {http}")
    stock_log = read("reidcam-stock.log")
    if (stock.get("ActiveState"), stock.get("NRestarts")) != ("active", "0") or '"event":"enter"' not in stock_log:
        problems.append(f"stock Debian (no gpio group), no board I/O: {stock}; {stock_log[-1500:]}")
    if (start.get("ActiveState"), start.get("SubState")) != ("active", "running"):
        problems.append(f"start: {start}")
    if (reload.get("ActiveState"), reload.get("MainPID"), reload.get("NRestarts")) != \
            ("active", start.get("MainPID"), "0"):
        problems.append(f"reload: expected the same process still running, got {reload} (start: {start})")
    if (stop.get("Result"), stop.get("ExecMainStatus")) != ("success", "0"):
        problems.append(f"stop: {stop}")
    log = read("reidcam.log")
    job = read("job.log")
    for what in ("start", "reload"):
        if f"{what}: exit 0" not in job:
            problems.append(f"systemctl {what} failed: {job[-1500:]}")
    if "configuration reloaded" not in log:
        problems.append("no 'configuration reloaded' in the journal after systemctl reload")
    events = [line for line in log.splitlines() if line.startswith("{")]
    kinds = [re.search(r'"event":"(\w+)"', e).group(1) for e in events if '"event"' in e]
    print(f"journal: {len(log.splitlines())} lines, events {kinds[:8]}{'…' if len(kinds) > 8 else ''}")
    if "enter" not in kinds:
        problems.append(f"no enter event in the journal: {log[-1500:]}")
    gpio = read("gpio.txt")
    print(f"GPIO lines held: {gpio.strip() or '-'}")
    if gpio.count("reidcam") < 2:
        problems.append(f"expected the LED and button lines held by reidcam: {gpio!r}")
    state = read("state.txt")
    print(f"state directory: {state.strip()}")
    if not re.search(r"^600 \d+ \d+ /var/lib/private/reidcam/gallery\.bin$", state, re.M):
        problems.append(f"gallery not saved 0600 in the state directory: {state!r}")
    health = read("healthz.json")
    print(f"/healthz with the network drop-in: {health.strip()[:200] or '-'}")
    if '"healthy"' not in health:
        problems.append(f"/healthz not answered with network.conf: {read('reidcam-http.log')[-1500:]}")
    for name in ("reidcam-stock.log", "reidcam.log", "reidcam-http.log"):
        text = read(name)
        for bad in ("Operation not permitted", "Bad system call", "SIGSYS", "Permission denied", "panicked"):
            if bad in text:
                lines = [line for line in text.splitlines() if bad in line]
                problems.append(f"{name}: {bad!r}: {lines[:3]}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, required=True, help="aarch64 reidcam (static)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--keep", type=Path, help="copy the guest's output directory here")
    args = ap.parse_args()
    if reference.require_shared("systemd_e2e") is None:
        return 0
    if not args.binary.is_file():
        sys.exit(f"systemd_e2e: {args.binary}: no such binary (cargo build --release --target aarch64-unknown-linux-gnu)")
    vmlinuz, modules_dir, order = guest_assets()
    initramfs = CACHE / f"initramfs-systemd-{modules_dir.name}.cpio.gz"
    sources = [Path(__file__), *(ROOT / "tools" / "guest" / "systemd").iterdir()]
    if not initramfs.exists() or initramfs.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        build_initramfs(modules_dir, order, initramfs)
    print(f"guest: kernel {modules_dir.name}, systemd initramfs {initramfs.stat().st_size // 1024} KiB")
    with tempfile.TemporaryDirectory(prefix="reidcam-systemd-") as tmp:
        shared = Path(tmp)
        (shared / "out").mkdir()
        shutil.copy(args.binary, shared / "reidcam")
        # Our default model (the unit's job is not the model's: the smallest shipped one).
        shutil.copy(ROOT / "models" / "default.onnx", shared / "model.onnx")
        shutil.copy(ROOT / "models" / "default.toml", shared / "model.toml")
        shutil.copy(ROOT / "board" / "qemu-virt.toml", shared / "qemu-virt.toml")
        shutil.copy(ROOT / "board" / "systemd" / "reidcam.service", shared / "reidcam.service")
        for drop_in in ("gpio.conf", "network.conf"):
            shutil.copy(ROOT / "board" / "systemd" / drop_in, shared / drop_in)
        (shared / "reidcam.toml").write_text(CONFIG)
        (shared / "http.toml").write_text(HTTP)
        (shared / "job.sh").write_text(JOB)
        status, console, seconds = boot(vmlinuz, initramfs, shared, args.timeout)
        out = Path(tempfile.mkdtemp(prefix="reidcam-systemd-out-"))
        shutil.copytree(shared / "out", out, dirs_exist_ok=True)
        (out / "console.log").write_text(console)
        if args.keep:
            shutil.copytree(out, args.keep, dirs_exist_ok=True)
    job_log = (out / "job.log").read_text(errors="replace") if (out / "job.log").exists() else "(no job log)"
    print(job_log[-2500:])
    if status is None:
        print(console[-4000:])
        sys.exit(f"systemd_e2e: FAILED: the guest never reported an exit status ({seconds:.1f} s); output in {out}")
    problems = check(out)
    print(f"guest boot + job: {seconds:.1f} s; output in {out}")
    return vivid_e2e.verdict("systemd_e2e", problems)


if __name__ == "__main__":
    sys.exit(main())
