#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, through the libfuzzer-sys crate) of what reidcam reads from
# outside; see docs/fuzzing.md for the targets and the results so far.
#   tools/fuzz.sh [SECONDS per target, default 60] [TARGET...]      (default: every target)
#   tools/fuzz.sh --build-only        (build the targets, run nothing: CI builds them early)
# Built with the stable toolchain and the coverage flags cargo-fuzz passes (`-Cpasses=sancov-module`
# and friends, `--cfg fuzzing`; no sanitizer: the targets are safe Rust over our parsers, and
# libFuzzer's coverage, crash, timeout and memory checks are what is used), so nothing beyond the
# main build's toolchain is installed. Built in $CARGO_TARGET_DIR/fuzz (default fuzz/target).
# The growing corpus is kept in $REIDCAM_FUZZ_CORPUS/<target> (default fuzz/corpus), seeded from
# fuzz/seeds/<target>; a crash is written to fuzz/artifacts/<target>/ and stops the run with exit
# status 1. Reproduce one with: <target dir>/x86_64-unknown-linux-gnu/release/<target> <file>.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build_only=false
if [ "${1:-}" = "--build-only" ]; then
    build_only=true
    shift
fi
secs="${1:-60}"
shift || true
cd "$root"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^reidcam-fuzz$')
fi
triple=$(rustc -vV | sed -n 's/^host: //p')
target_dir="${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz}"
target_dir="${target_dir:-$root/fuzz/target}"
corpus_root="${REIDCAM_FUZZ_CORPUS:-$root/fuzz/corpus}"
# cargo-fuzz's flags, minus its one codegen unit per crate (4x the build time on 2 cores, for
# ~10% more inputs per second).
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 --cfg fuzzing"
cargo build --release --manifest-path fuzz/Cargo.toml --target "$triple" --target-dir "$target_dir" \
    --config 'profile.release.debug="line-tables-only"' --bins
if $build_only; then
    exit 0
fi
for t in "${targets[@]}"; do
    mkdir -p "$corpus_root/$t" "fuzz/artifacts/$t"
    echo "=== fuzz $t (${secs} s)"
    "$target_dir/$triple/release/$t" -artifact_prefix="fuzz/artifacts/$t/" "$corpus_root/$t" "fuzz/seeds/$t" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 2>&1 |
        grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+== ERROR|SUMMARY|Test unit written|thread .* panicked)' || true
    if [ -n "$(ls -A "fuzz/artifacts/$t" 2>/dev/null)" ]; then
        echo "=== $t: crash found, see fuzz/artifacts/$t"
        exit 1
    fi
done
