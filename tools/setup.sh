#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for reidcam: the pinned Rust toolchain (rust-toolchain.toml),
# libclang (the v4l crate generates its V4L2 bindings with bindgen) and the Python tooling venv
# (tools/.venv). Idempotent; safe to run again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup run "$toolchain" cargo --version >/dev/null 2>&1 \
    || ! rustup component list --toolchain "$toolchain" --installed 2>/dev/null | grep -q '^clippy'; then
    rustup toolchain install "$toolchain" --profile minimal --component rustfmt --component clippy
fi

# System packages the build needs: libclang for the `v4l` crate's bindgen step, g++ for the
# OpenH264 decoder (built from the `openh264` crate's bundled C++ source).
"$root/tools/ensure-packages.sh" libclang-dev g++

"$root/tools/setup-python.sh"
