#!/usr/bin/env bash
# The live Engram sink: criterion figures for the client-side cost per memory (HTTP JSON body, gRPC request +
# protobuf encoding), then a load of ENGRAM_BENCH_MEMORIES (default 100000) memories into the in-process stand-in
# over HTTP and over gRPC in the same run, printing memories/s for both and the gRPC/HTTP ratio.
#
#   scripts/bench-engram.sh                  release build (the bench profile)
#   PROFILE=dev scripts/bench-engram.sh      the dev profile: no release build of the whole tree (~30 min on 2 cores)
#   ENGRAM_BENCH_MEMORIES=20000 ENGRAM_BENCH_PER_SPACE=100 ENGRAM_BENCH_PARALLEL=16 scripts/bench-engram.sh -- --quick
#
# The stand-in compares every write with every memory of its space (Engram's duplicate filter, exactly), so its
# own cost grows with the space size; the load spreads over spaces of ENGRAM_BENCH_PER_SPACE memories.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram-migrate/target}"
args=(--bench engram_sink)
[ -z "${PROFILE:-}" ] || args+=(--profile "$PROFILE")
[ "${1:-}" = "--" ] && shift
exec cargo bench "${args[@]}" -- "$@"
