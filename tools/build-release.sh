#!/usr/bin/env bash
# Build the binaries we ship: `reidcam` for each ARM target, with the `dist` profile (fat LTO,
# one codegen unit, stripped) and without the default features a camera does not use (H.264
# replays, progress bars and plots: Cargo.toml `[features]`; REIDCAM_FEATURES=default builds
# them in); aarch64 statically linked, armv7 against glibc ≥ 2.36
# (.cargo/config.toml says why). One command on a fresh Debian 12 machine: installs what it
# needs first.
#   tools/build-release.sh [TARGET...]      default: aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
# Binaries land in dist/<target>/reidcam; their sizes are printed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/tools/setup.sh" >/dev/null
"$root/tools/setup-cross.sh"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
target_dir=${CARGO_TARGET_DIR:-$root/target}
for target in "${targets[@]}"; do
    echo "=== building reidcam for $target (profile dist: LTO, stripped)"
    if [ "${REIDCAM_FEATURES:-board}" = default ]; then
        cargo build --profile dist --target "$target" --bin reidcam
    else
        cargo build --profile dist --target "$target" --bin reidcam --no-default-features
    fi
    mkdir -p "dist/$target"
    cp "$target_dir/$target/dist/reidcam" "dist/$target/reidcam"
done
echo
echo "binary sizes:"
for target in "${targets[@]}"; do
    stat -c %s "dist/$target/reidcam" | awk -v t="$target" '{ printf "  %-32s %10d bytes (%.2f MiB)\n", t, $1, $1 / 1048576 }'
done
