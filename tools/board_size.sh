#!/usr/bin/env bash
# The board build (`--no-default-features`: no H.264 replay, no progress bars or plots; what
# tools/build-release.sh ships) compiles, and its binary stays within 2% of the stored figure
# (tests/fixtures/board-size.json; x86-64 release, stripped). Prints the default build's size
# beside it. Run after `cargo build --release` (CI does).
#   tools/board_size.sh [--update]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target_dir=${CARGO_TARGET_DIR:-$root/target}
fixture=tests/fixtures/board-size.json
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo build --release --bin reidcam
strip -o "$tmp/default" "$target_dir/release/reidcam"
cargo build --release --no-default-features --bin reidcam
strip -o "$tmp/board" "$target_dir/release/reidcam"
# Leave the default binary in place for the steps after this one.
cargo build --release --bin reidcam
default=$(stat -c %s "$tmp/default")
board=$(stat -c %s "$tmp/board")
echo "reidcam x86-64 release, stripped: default features $default bytes, board build $board bytes ($(( (board - default) * 1000 / default )) per mille)"
if [ "${1:-}" = "--update" ]; then
    printf '{\n  "what": "reidcam x86-64 release --no-default-features, stripped (tools/board_size.sh --update)",\n  "bytes": %d\n}\n' "$board" > "$fixture"
    echo "stored in $fixture"
    exit 0
fi
stored=$(sed -n 's/.*"bytes": *\([0-9]*\).*/\1/p' "$fixture")
limit=$(( stored + stored / 50 ))
echo "stored figure $stored bytes; limit $limit"
if [ "$board" -gt "$limit" ]; then
    echo "board build grew past 2% of the stored figure: $board > $limit bytes (tools/board_size.sh --update after a deliberate change)"
    exit 1
fi
