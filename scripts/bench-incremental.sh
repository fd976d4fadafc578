#!/usr/bin/env bash
# Incremental re-run benchmark (issue 21): a SQLite source of ROWS orders + ROWS/10 customers
# (scripts/gen-large-sqlite.sh), a full run, then 1% of the rows changed (updates, deletes, inserts), then
#   - `run --incremental` on the same work directory, and
#   - a fresh full run of the changed source in a work directory of its own (the peer, same run),
# each under /usr/bin/time -v. Prints wall seconds, peak RSS, the delta and what was embedded, and the ratio.
#
#   scripts/bench-incremental.sh [ROWS]     default: 1000000
#   PROVIDER=model2vec:DIR ...              the embedding provider of all three runs (default: hashing)
#   CACHE_MB=4096 ...                       the persistent embedding cache on the first and incremental runs
#                                           (default: none; an incremental run keeps unchanged vectors in the
#                                           bundle it extends, so it needs no cache)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram-migrate/target}"
missing=(); [ -x /usr/bin/time ] || missing+=(time); command -v bc >/dev/null || missing+=(bc); command -v sqlite3 >/dev/null || missing+=(sqlite3)
[ ${#missing[@]} -eq 0 ] || { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bins >&2
BIN="$CARGO_TARGET_DIR/release/engram-migrate"
ROWS="${1:-1000000}"
CACHE=(); [ -z "${CACHE_MB:-}" ] || CACHE=(--embedding-cache-mb "$CACHE_MB")
PROVIDER="${PROVIDER:-hashing}"
BASE="${BENCH_DIR:-/tmp/engram-migrate-bench}"
WORK="$BASE/incremental-$ROWS"
rm -rf "$WORK"; mkdir -p "$WORK"
# The generated database is shared with scripts/bench-e2e.sh; this run changes a copy of it.
[ -f "$BASE/in-$ROWS.sqlite" ] || bash scripts/gen-large-sqlite.sh "$ROWS" "$BASE/in-$ROWS.sqlite" >&2
DB="$WORK/src.sqlite"
cp "$BASE/in-$ROWS.sqlite" "$DB"

peak() { grep "Maximum resident" "$1" | awk '{print $NF}'; }
wall() { grep "Elapsed (wall" "$1" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }'; }
timed() { # NAME ARGS...: runs the binary, prints a line
  local name="$1"; shift
  /usr/bin/time -v "$BIN" "$@" --quiet > "$WORK/$name.out" 2> "$WORK/$name.time" || { cat "$WORK/$name.time" >&2; exit 1; }
  printf "%-34s %10.1f %12s\n" "$name" "$(wall "$WORK/$name.time")" "$(( $(peak "$WORK/$name.time") / 1024 ))"
}

printf "%-34s %10s %12s\n" what seconds peak_RSS_MB
timed "full run (first)" run --source "$DB" --target "$WORK/bundle" --work-dir "$WORK/w" --embedding-provider "$PROVIDER" "${CACHE[@]}"

# 1% of the rows: 0.8% of orders updated, 0.1% deleted, 0.1% inserted; 1% of customers renamed.
C=$(sqlite3 "$DB" "SELECT count(*) FROM customers")
sqlite3 "$DB" <<SQL
UPDATE orders SET status = 'changed-' || id WHERE id % 125 = 0;
DELETE FROM orders WHERE id % 1000 = 1;
INSERT INTO orders (id, customer_id, status)
  SELECT id + 100000000, customer_id, 'inserted' FROM orders WHERE id % 1000 = 2;
UPDATE customers SET name = name || ' (renamed)' WHERE id % 100 = 0;
SQL
cp "$DB" "$WORK/changed.sqlite"

timed "run --incremental (1% changed)" run --source "$DB" --target "$WORK/bundle" --work-dir "$WORK/w" --embedding-provider "$PROVIDER" "${CACHE[@]}" --incremental
timed "full run of the changed source" run --source "$WORK/changed.sqlite" --target "$WORK/full" --work-dir "$WORK/full.work" --embedding-provider "$PROVIDER"

inc=$(wall "$WORK/run --incremental (1% changed).time"); full=$(wall "$WORK/full run of the changed source.time")
printf "incremental / full: %.2f\n" "$(echo "$inc / $full" | bc -l)"
PY=$(bash scripts/python-env.sh | tail -1)
"$PY" - "$WORK/w/report.json" "$WORK/bundle" "$WORK/full" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
d = r["delta"]
print(f"delta rows: {d['added']} added, {d['changed']} changed, {d['deleted']} deleted, {d['unchanged']} unchanged")
m = d.get("memories") or {}
print(f"delta memories: {m}")
e = r["embedding"]
print(f"embedded {e['embedded']} of {e['texts']} texts ({e.get('hits_from_earlier_runs', 0)} from the earlier run's cache)")
print(f"bundle: {r.get('incremental_mode', 'rewrite')}")
for s in r["stages"]:
    print(f"  stage {s['stage']:<14} {s['seconds']:>8.1f} s")
a = json.load(open(sys.argv[2] + "/bundle.json")); b = json.load(open(sys.argv[3] + "/bundle.json"))
same = [(s["space"], s["memories"]["checksum"], s["edges"]["checksum"]) for s in a["spaces"]] == \
       [(s["space"], s["memories"]["checksum"], s["edges"]["checksum"]) for s in b["spaces"]]
print(f"incremental bundle equals the full run's: {same}")
PYEOF
