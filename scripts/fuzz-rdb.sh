#!/usr/bin/env bash
# Fuzzes the RDB reader (fuzz/fuzz_targets/rdb.rs) with libFuzzer, as cargo-fuzz would, without needing cargo-fuzz:
# nightly rustc with SanitizerCoverage and AddressSanitizer, the reader compiled on its own (it is std only).
#
#   scripts/fuzz-rdb.sh [SECONDS] [SEED_DIR...]   default 600 s; seeds: dumps written by the test servers, if any
#
# The corpus grows in ${ENGRAM_MIGRATE_CACHE:-~/.cache/engram-migrate}/fuzz-corpus/rdb; crashes land in
# fuzz/artifacts/rdb/ (a crash fails the script).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_TO_RUN="${1:-600}"; shift || true
CACHE="${ENGRAM_MIGRATE_CACHE:-$HOME/.cache/engram-migrate}"
CORPUS="$CACHE/fuzz-corpus/rdb"
mkdir -p "$CORPUS" "$ROOT/fuzz/artifacts/rdb"
for d in "$@" /tmp/engram-migrate-redis-*; do
  for f in "$d"/*.rdb; do [ -f "$f" ] && cp "$f" "$CORPUS/seed-$(basename "$d")-$(basename "$f")"; done
done
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow_checks -Zsanitizer=address"
cargo +nightly build --release --target x86_64-unknown-linux-gnu --manifest-path "$ROOT/fuzz/Cargo.toml" \
  --target-dir "$CACHE/fuzz-target" --bin rdb >&2
"$CACHE/fuzz-target/x86_64-unknown-linux-gnu/release/rdb" "$CORPUS" \
  -artifact_prefix="$ROOT/fuzz/artifacts/rdb/" -max_total_time="$SECONDS_TO_RUN" -max_len=1048576 -rss_limit_mb=2048 \
  -print_final_stats=1
