#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of what reidcam reads from outside; see
# docs/fuzzing.md for the targets and the results so far.
#   tools/fuzz.sh [SECONDS per target, default 60] [TARGET...]      (default: every target)
# Installs a nightly toolchain and cargo-fuzz when missing. The growing corpus is kept in
# fuzz/corpus/<target> (not tracked), seeded from fuzz/seeds/<target>; a crash is written to
# fuzz/artifacts/<target>/ and stops the run with exit status 1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-60}"
shift || true
cd "$root"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^reidcam-fuzz$')
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz > /dev/null || cargo +nightly install cargo-fuzz --locked
# No sanitizer: the targets are safe Rust over our parsers; libFuzzer's coverage and its crash,
# timeout and memory checks are what is used (ASan would double the build and the runs).
cargo +nightly fuzz build -O --sanitizer none
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    echo "=== fuzz $t (${secs} s)"
    cargo +nightly fuzz run -O --sanitizer none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 2>&1 |
        grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+== ERROR|SUMMARY|Test unit written|thread .* panicked)' || true
    if [ -n "$(ls -A "fuzz/artifacts/$t" 2>/dev/null)" ]; then
        echo "=== $t: crash found, see fuzz/artifacts/$t"
        exit 1
    fi
done
