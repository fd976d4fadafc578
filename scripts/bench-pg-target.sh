#!/usr/bin/env bash
# PostgreSQL-target benchmark: builds a bundle of ROWS memories (default 1 000 000; a synthetic SQLite database
# from scripts/gen-large-sqlite.sh, hashing embeddings of 768 floats), starts PostgreSQL 15 + pgvector with
# scripts/services/postgres.sh, then in the same run loads that bundle
#   - with `engram-migrate load --target postgres://...` (binary COPY into staging on parallel connections, one
#     merge transaction, HNSW index after the data), and
#   - with the peer, scripts/peer_pg_target.py (psycopg 3 binary COPY + pgvector's adapter, one connection, then
#     the same HNSW index),
# each under /usr/bin/time -v, and prints memories/s of the data load, the index build apart, peak RSS and ratios.
#
#   scripts/bench-pg-target.sh [ROWS]     SKIP_BUILD=1 reuses the release binary; BIN=PATH times another binary
#   BENCH_PG_PORT (default 55433), BENCH_DIR (default /tmp/engram-migrate-bench)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram-migrate/target}"
ROWS="${1:-1000000}"
PORT="${BENCH_PG_PORT:-55433}"
missing=(); [ -x /usr/bin/time ] || missing+=(time); command -v bc >/dev/null || missing+=(bc)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
[ ${#missing[@]} -eq 0 ] || { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
if [ -z "${BIN:-}" ]; then
  [ -n "${SKIP_BUILD:-}" ] || cargo build --release --bins >&2
  BIN="$CARGO_TARGET_DIR/release/engram-migrate"
fi
WORK="${BENCH_DIR:-/tmp/engram-migrate-bench}/pg-target-$ROWS"
mkdir -p "$WORK"

VENV="$HOME/.cache/engram-migrate/bench-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import psycopg, pgvector, pyarrow, numpy" 2>/dev/null \
  || "$VENV/bin/pip" install -q "psycopg[binary]==3.2.*" "pgvector==0.4.*" pyarrow numpy >&2

# The bundle: ROWS/10 customers + ROWS orders would be 1.1 x ROWS memories; only the orders table is kept.
DB="$WORK/src.sqlite"
[ -f "$DB" ] || bash scripts/gen-large-sqlite.sh "$ROWS" "$DB" >&2
BUNDLE="$WORK/bundle"
if [ ! -f "$BUNDLE/bundle.json" ]; then
  "$BIN" run --source "$DB" --include orders --skip-edges --target "$BUNDLE" --validate false --quiet >&2
fi
MEMORIES=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['totals']['memories'])" "$BUNDLE/bundle.json")

BASE=$(bash scripts/services/postgres.sh start "$PORT" | tail -1)
URL="${BASE%/postgres}/bench_target"
PSQL=(runuser -u postgres -- env PGOPTIONS="-c client_min_messages=warning" psql -h "/tmp/engram-migrate-pg-$PORT" -p "$PORT" -U postgres -qAt -v ON_ERROR_STOP=1)
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS bench_target WITH (FORCE)"
"${PSQL[@]}" -d postgres -c "CREATE DATABASE bench_target"

field() { grep -E "$1" "$2" | head -1 | awk -F': ' '{print $2}'; }
secs() { # "m:ss.ss" or "h:mm:ss" -> seconds
  echo "$1" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }'
}

echo "== engram-migrate load ($MEMORIES memories)" >&2
rm -rf "$BUNDLE.work"
RUST_LOG=engram_migrate=info /usr/bin/time -v "$BIN" load --bundle "$BUNDLE" --target "$URL" --quiet \
  > "$WORK/ours.out" 2> "$WORK/ours.time" || { cat "$WORK/ours.time" >&2; exit 1; }
OURS_WALL=$(secs "$(field 'Elapsed \(wall clock\)' "$WORK/ours.time")")
OURS_RSS=$(field 'Maximum resident set size' "$WORK/ours.time")
OURS_INDEX=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/ours.time" | grep 'vector index ready' | grep -o 'seconds=[0-9.]*' | tail -1 | cut -d= -f2)
OURS_DATA=$(echo "$OURS_WALL - ${OURS_INDEX:-0}" | bc -l)

echo "== peer: psycopg binary COPY + pgvector" >&2
/usr/bin/time -v "$VENV/bin/python" scripts/peer_pg_target.py "$BUNDLE" "$URL" peer \
  > "$WORK/peer.out" 2> "$WORK/peer.time" || { cat "$WORK/peer.time" >&2; exit 1; }
PEER_RSS=$(field 'Maximum resident set size' "$WORK/peer.time")
PEER_COPY=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['copy_seconds'])" "$WORK/peer.out")
PEER_INDEX=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['index_seconds'])" "$WORK/peer.out")

printf '%s, release build, %s memories of %s floats, PostgreSQL 15 + pgvector on loopback\n' \
  "$(date -u +%F)" "$MEMORIES" "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['embedding']['dimension'])" "$BUNDLE/bundle.json")"
printf '%-44s %10s %12s %10s %10s\n' "" "data s" "memories/s" "index s" "peak RSS"
printf '%-44s %10.1f %12.0f %10.1f %7d MB\n' "engram-migrate load (COPY, merge, read-back)" "$OURS_DATA" \
  "$(echo "$MEMORIES / $OURS_DATA" | bc -l)" "${OURS_INDEX:-0}" "$((OURS_RSS / 1024))"
printf '%-44s %10.1f %12.0f %10.1f %7d MB\n' "peer: psycopg binary COPY" "$PEER_COPY" \
  "$(echo "$MEMORIES / $PEER_COPY" | bc -l)" "$PEER_INDEX" "$((PEER_RSS / 1024))"
printf 'data-load speed, ours / peer: %.2fx\n' "$(echo "$PEER_COPY / $OURS_DATA" | bc -l)"
