#!/usr/bin/env bash
# The performance goals in one run (issue 19), each with its peer in the same run, on the release build:
#   P1  PostgreSQL snapshot of 1M mixed rows vs DuckDB's postgres extension  (scripts/bench-postgres.sh)
#   P5  end to end, 1.1M SQLite rows -> validated bundle, per-stage table     (scripts/bench-e2e.sh 1000000)
#   P7  growth: the same at 11M rows (10M orders), opt-in: TEN_M=1 (about 10 minutes more)
#
#   scripts/bench-perf.sh              SKIP_BUILD=1 to reuse the release binary
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram-migrate/target}"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bins >&2
export SKIP_BUILD=1
echo "== $(date -u +%F) release build, $(nproc) cores"
echo "== P1: PostgreSQL snapshot vs DuckDB"
bash scripts/bench-postgres.sh 1000000
echo "== P5: end to end, 1.1M rows (and the snapshot vs sqlite3 + pyarrow)"
if [ -n "${TEN_M:-}" ]; then
  echo "== P7: 1.1M vs 11M rows"
  bash scripts/bench-e2e.sh 1000000 10000000
else
  bash scripts/bench-e2e.sh 1000000
fi
