#!/usr/bin/env bash
# Install what cross-building for ARM and testing under QEMU need, on Debian 12. Idempotent: only
# missing packages are installed, so a second run takes a second.
#   - cross C toolchains (linkers; tract-linalg assembles its NEON kernels with them)
#   - qemu-user-static (cargo's test runner), qemu-user (the TCG plugin host for the cost figure)
#   - qemu-system-arm, kmod, cpio (the arm64 guest with the vivid V4L2 driver)
#   - the Rust standard libraries for aarch64 and armv7 (pinned toolchain)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$root/tools/ensure-packages.sh" gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross \
    gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf \
    libc6-dev-armhf-cross qemu-user-static qemu-user qemu-system-arm kmod cpio gcc libc6-dev

toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
for target in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    rustup target list --toolchain "$toolchain" --installed | grep -qx "$target" \
        || rustup target add --toolchain "$toolchain" "$target"
done
