#!/usr/bin/env bash
# End-to-end benchmark: generates synthetic SQLite inputs (scripts/gen-large-sqlite.sh), runs `engram-migrate run`
# on each under /usr/bin/time -v, and prints rows/s and peak RSS. In the same run, a peer stages the same database
# into Parquet: Python's sqlite3 + pyarrow (the usual hand-rolled snapshot), for a side-by-side snapshot ratio.
#
#   scripts/bench-e2e.sh [ROWS ...]        default: 1000000 3000000
#   RUN_ARGS="--memory-limit-mb 128" scripts/bench-e2e.sh ...   extra flags for `run` (a lower SQL memory limit makes
#                                                              validation spill, so peak RSS stops growing with rows)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram-migrate/target}"
missing=(); [ -x /usr/bin/time ] || missing+=(time); command -v bc >/dev/null || missing+=(bc); command -v sqlite3 >/dev/null || missing+=(sqlite3)
[ ${#missing[@]} -eq 0 ] || { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bins >&2
BIN="$CARGO_TARGET_DIR/release/engram-migrate"
PY=$(bash scripts/python-env.sh | tail -1)
WORK="${BENCH_DIR:-/tmp/engram-migrate-bench}"
mkdir -p "$WORK"
SIZES=("$@"); [ ${#SIZES[@]} -gt 0 ] || SIZES=(1000000 3000000)

peak() { grep "Maximum resident" "$1" | awk '{print $NF}'; }
wall() { grep "Elapsed (wall" "$1" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }'; }

printf "%-10s %-28s %10s %12s %12s\n" rows what seconds rows/s peak_RSS_MB
for N in "${SIZES[@]}"; do
  DB="$WORK/in-$N.sqlite"
  [ -f "$DB" ] || bash scripts/gen-large-sqlite.sh "$N" "$DB" >&2
  TOTAL=$(sqlite3 "$DB" "SELECT (SELECT count(*) FROM customers) + (SELECT count(*) FROM orders)")
  rm -rf "$WORK/out-$N" "$WORK/out-$N.work"
  /usr/bin/time -v "$BIN" run --quiet ${RUN_ARGS:-} --source "$DB" --target "$WORK/out-$N" > "$WORK/run-$N.log" 2> "$WORK/time-$N.log" \
    || { cat "$WORK/time-$N.log" >&2; exit 1; }
  s=$(wall "$WORK/time-$N.log"); rss=$(( $(peak "$WORK/time-$N.log") / 1024 ))
  printf "%-10s %-28s %10.1f %12.0f %12s\n" "$N" "engram-migrate run (all)" "$s" "$(echo "$TOTAL / $s" | bc -l)" "$rss"
  "$PY" - "$WORK/out-$N.work/report.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
for s in r["stages"]:
    rate = s["rows"] / s["seconds"] if s["seconds"] else 0
    print(f"{'':<10}   {'stage: ' + s['stage']:<26} {s['seconds']:>10.1f} {rate:>12.0f}")
e = r.get("embedding") or {}
print(f"{'':<10}   embedding cache hit rate {100 * e.get('hit_rate', 0):.1f}%")
PYEOF
  rm -rf "$WORK/snap-$N"
  /usr/bin/time -v "$BIN" snapshot --quiet --source "$DB" --work-dir "$WORK/snap-$N" > /dev/null 2> "$WORK/time-snap-$N.log"
  s1=$(wall "$WORK/time-snap-$N.log"); r1=$(( $(peak "$WORK/time-snap-$N.log") / 1024 ))
  printf "%-10s %-28s %10.1f %12.0f %12s\n" "$N" "engram-migrate snapshot" "$s1" "$(echo "$TOTAL / $s1" | bc -l)" "$r1"
  rm -rf "$WORK/peer-$N"
  /usr/bin/time -v "$PY" scripts/peer_snapshot.py "$DB" "$WORK/peer-$N" > /dev/null 2> "$WORK/time-peer-$N.log"
  s2=$(wall "$WORK/time-peer-$N.log"); r2=$(( $(peak "$WORK/time-peer-$N.log") / 1024 ))
  printf "%-10s %-28s %10.1f %12.0f %12s\n" "$N" "peer: sqlite3+pyarrow" "$s2" "$(echo "$TOTAL / $s2" | bc -l)" "$r2"
  printf "%-10s %-28s %10.2fx\n" "$N" "snapshot speed vs peer" "$(echo "$s2 / $s1" | bc -l)"
done
