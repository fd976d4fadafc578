#!/usr/bin/env bash
# Neo4j-target benchmark against a real Bolt server (ArcadeDB, scripts/services/arcadedb.sh), at two sizes:
#   - the code graph fixture through sql/codegraph.sql (379 nodes, 801 relationships), and
#   - a generated database (scripts/gen-large-sqlite.sh ROWS: ROWS/10 customers + ROWS orders, one relationship per
#     order) through the generic mapping;
# each bundle (hashing embeddings, 768 floats) loaded in the same run, into fresh databases of the same server, by
#   - `engram-migrate load --target bolt://...` (UNWIND MERGE units under 256 KB, relationships type by type, read-back),
#   - the peer, scripts/peer_neo4j_target.py: the official Python driver, UNWIND batches of 1000 (the seed's way),
#     which then counts what the server holds,
# under /usr/bin/time -v; prints nodes+relationships/s, peak RSS, and how many nodes each left with their embedding.
#
#   scripts/bench-neo4j-target.sh [ROWS]   default 20000; PARALLEL (default 4: ArcadeDB's optimistic transactions
#                                          conflict and are retried beyond a few writers); SKIP_BUILD=1 reuses the release binary; BIN=PATH
#   BENCH_BOLT_PORT (default 57697), BENCH_DIR (default /tmp/engram-migrate-bench)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram-migrate/target}"
ROWS="${1:-20000}"
PORT="${BENCH_BOLT_PORT:-57697}"
export ARCADEDB_PASSWORD="${ARCADEDB_PASSWORD:-engram-bench-pw}"
missing=(); [ -x /usr/bin/time ] || missing+=(time); command -v bc >/dev/null || missing+=(bc)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
[ ${#missing[@]} -eq 0 ] || { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
if [ -z "${BIN:-}" ]; then
  [ -n "${SKIP_BUILD:-}" ] || cargo build --release --bins >&2
  BIN="$CARGO_TARGET_DIR/release/engram-migrate"
fi
WORK="${BENCH_DIR:-/tmp/engram-migrate-bench}/neo4j-target"
mkdir -p "$WORK"
VENV="$HOME/.cache/engram-migrate/bench-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import neo4j, pyarrow" 2>/dev/null || "$VENV/bin/pip" install -q neo4j pyarrow >&2
bash scripts/services/arcadedb.sh start "$PORT" >/dev/null
EMPTY="$WORK/empty.cypher"; echo "CREATE (:BenchSeed {k: 1});" > "$EMPTY"

# The two bundles.
if [ ! -f "$WORK/code/bundle.json" ]; then
  "$BIN" run --source fixtures/codegraph.sqlite --sql sql/codegraph.sql --target "$WORK/code" --quiet >&2
fi
DB="$WORK/gen-$ROWS.sqlite"
[ -f "$DB" ] || bash scripts/gen-large-sqlite.sh "$ROWS" "$DB" >&2
if [ ! -f "$WORK/gen-$ROWS/bundle.json" ]; then
  "$BIN" run --source "$DB" --target "$WORK/gen-$ROWS" --quiet >&2
fi

field() { grep -E "$1" "$2" | head -1 | awk -F': ' '{print $2}'; }
secs() { echo "$1" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }'; }
total() { python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['totals']; print(t['memories'] + t['edges'])" "$1/bundle.json"; }

printf '%s, release build, ArcadeDB over Bolt on loopback, hashing embeddings (768 floats)\n' "$(date -u +%F)"
printf '%-30s %-8s %10s %14s %10s %22s\n' "bundle" "loader" "wall s" "nodes+rels/s" "peak RSS" "nodes with embedding"
for name in code "gen-$ROWS"; do
  B="$WORK/$name"
  N=$(total "$B")
  NODES=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['totals']['memories'])" "$B/bundle.json")
  OURS_DB="ours_${name//-/_}"; PEER_DB="peer_${name//-/_}"
  bash scripts/services/arcadedb.sh load "$EMPTY" "$PORT" "$OURS_DB" >/dev/null
  bash scripts/services/arcadedb.sh load "$EMPTY" "$PORT" "$PEER_DB" >/dev/null
  rm -rf "$B.work/load-checkpoint.json"
  /usr/bin/time -v "$BIN" load --bundle "$B" --target "bolt://127.0.0.1:$PORT/$OURS_DB" --target-user root \
    --target-password "$ARCADEDB_PASSWORD" --max-predicted-loss 1 --target-parallel "${PARALLEL:-4}" --quiet > "$WORK/ours-$name.out" 2> "$WORK/ours-$name.time" \
    || { tail -5 "$WORK/ours-$name.time" >&2; }
  OW=$(secs "$(field 'Elapsed \(wall clock\)' "$WORK/ours-$name.time")")
  OR=$(field 'Maximum resident set size' "$WORK/ours-$name.time")
  OK=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1]))['delivery']; print(sum(s['target'] - s['embedding_differs'] for s in d['spaces']))" "$B.work/report.json")
  printf '%-30s %-8s %10.1f %14.0f %7d MB %22s\n' "$name ($N)" ours "$OW" "$(echo "$N / $OW" | bc -l)" "$((OR / 1024))" "$OK of $NODES"
  /usr/bin/time -v "$VENV/bin/python" scripts/peer_neo4j_target.py "$B" "bolt://127.0.0.1:$PORT" root \
    "$ARCADEDB_PASSWORD" "$PEER_DB" > "$WORK/peer-$name.out" 2> "$WORK/peer-$name.time" || { tail -5 "$WORK/peer-$name.time" >&2; }
  PR=$(field 'Maximum resident set size' "$WORK/peer-$name.time")
  PS=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['seconds'])" "$WORK/peer-$name.out")
  PE=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['nodes_with_embedding'])" "$WORK/peer-$name.out")
  printf '%-30s %-8s %10.1f %14.0f %7d MB %22s\n' "$name ($N)" peer "$PS" "$(echo "$N / $PS" | bc -l)" "$((PR / 1024))" "$PE of $NODES"
done
