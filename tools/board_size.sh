#!/usr/bin/env bash
# The board build, built where boards are: armv7 (32-bit Raspberry Pi OS), `--no-default-features`
# (no H.264 replay, no progress bars or plots: what tools/build-release.sh ships), release
# profile. It compiles, and its stripped binary stays within 2% of the stored figure
# (tests/fixtures/board-size.json). CI builds it once here and runs that binary under qemu-arm
# afterwards (its armv7 parity step): one armv7 build, without OpenH264's C++.
# Needs tools/setup-cross.sh's toolchain.
#   tools/board_size.sh [--update]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target_dir=${CARGO_TARGET_DIR:-$root/target}
triple=armv7-unknown-linux-gnueabihf
fixture=tests/fixtures/board-size.json
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo build --release --target "$triple" --no-default-features --bin reidcam
arm-linux-gnueabihf-strip -o "$tmp/board" "$target_dir/$triple/release/reidcam"
board=$(stat -c %s "$tmp/board")
echo "reidcam $triple release --no-default-features, stripped: $board bytes"
if [ "${1:-}" = "--update" ]; then
    printf '{\n  "what": "reidcam %s release --no-default-features, stripped (tools/board_size.sh --update)",\n  "bytes": %d\n}\n' \
        "$triple" "$board" > "$fixture"
    echo "stored in $fixture"
    exit 0
fi
what=$(sed -n 's/.*"what": *"\([^"]*\)".*/\1/p' "$fixture")
case $what in
"reidcam $triple "*) ;;
*)
    echo "$fixture holds another build's size ($what): tools/board_size.sh --update"
    exit 1
    ;;
esac
stored=$(sed -n 's/.*"bytes": *\([0-9]*\).*/\1/p' "$fixture")
limit=$(( stored + stored / 50 ))
echo "stored figure $stored bytes; limit $limit"
if [ "$board" -gt "$limit" ]; then
    echo "board build grew past 2% of the stored figure: $board > $limit bytes (tools/board_size.sh --update after a deliberate change)"
    exit 1
fi
