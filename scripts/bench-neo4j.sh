#!/usr/bin/env bash
# Neo4j-source snapshot benchmark against a real Bolt server (ArcadeDB, scripts/services/arcadedb.sh): loads a
# synthetic graph (default 100 000 nodes, 300 000 relationships, mixed property types: integers, floats, strings,
# booleans, lists, dates, datetimes, durations, points) and then, in the same run and against the same server, times
#   - `engram-migrate snapshot` (neo4rs, one streamed query per table, Arrow batches -> Parquet + checksums), and
#   - the official Python driver (`neo4j` from PyPI) reading the same two queries with the same fetch size and
#     turning each record's properties into JSON (scripts/peer_neo4j.py),
# each under /usr/bin/time -v, and prints records/s, peak RSS and the ratio.
#
#   scripts/bench-neo4j.sh [NODES] [RELS]    defaults 100000 300000; BENCH_BOLT_PORT (default 57697)
#   PROFILE=release|dev                       binary to time (default release; dev = the tests' build, deps at
#                                             opt-level 1); SKIP_BUILD=1 reuses it; FETCH=N fetch size (8192)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram-migrate/target}"
NODES="${1:-100000}"
RELS="${2:-300000}"
PORT="${BENCH_BOLT_PORT:-57697}"
PROFILE="${PROFILE:-release}"
FETCH="${FETCH:-8192}"
export ARCADEDB_PASSWORD="${ARCADEDB_PASSWORD:-engram-bench-pw}"
missing=(); [ -x /usr/bin/time ] || missing+=(time); command -v bc >/dev/null || missing+=(bc)
[ ${#missing[@]} -eq 0 ] || { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
if [ -z "${SKIP_BUILD:-}" ]; then
  # dev: the tests' build (`cargo test --no-run` also builds the binary); a plain `cargo build` would resolve
  # features without the dev-dependencies and rebuild much of the tree.
  if [ "$PROFILE" = release ]; then cargo build --release --bins >&2; else cargo test --no-run >&2; fi
fi
[ "$PROFILE" = release ] && BIN="$CARGO_TARGET_DIR/release/engram-migrate" || BIN="$CARGO_TARGET_DIR/debug/engram-migrate"
WORK="${BENCH_DIR:-/tmp/engram-migrate-bench}/neo4j"
mkdir -p "$WORK"

VENV="$HOME/.cache/engram-migrate/bench-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import neo4j" 2>/dev/null || "$VENV/bin/pip" install -q neo4j >&2

bash scripts/services/arcadedb.sh start "$PORT" >/dev/null
DB="bench_${NODES}_${RELS}"
URL="bolt://127.0.0.1:$PORT/$DB"

# The synthetic graph, written through the HTTP API in batches (one transaction each); skipped when a database
# of this size is there already.
"$VENV/bin/python" - "$PORT" "$ARCADEDB_PASSWORD" "$DB" "$NODES" "$RELS" <<'PYEOF'
import base64, json, sys, time, urllib.request
port, pw, db, nodes, rels = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
http = int(port) + 1
auth = {"Authorization": "Basic " + base64.b64encode(f"root:{pw}".encode()).decode(), "Content-Type": "application/json"}
def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{http}{path}", data=json.dumps(body).encode(), headers=auth)
    return json.loads(urllib.request.urlopen(req, timeout=3600).read() or b"{}")
def cypher(q, **params):
    return post(f"/api/v1/command/{db}", {"language": "cypher", "command": q, "params": params})
try:
    have = cypher("MATCH (n) RETURN count(n) AS c")["result"][0]["c"]
    have_r = cypher("MATCH ()-[r]->() RETURN count(r) AS c")["result"][0]["c"]
except Exception:
    have, have_r = -1, -1
if (have, have_r) == (nodes, rels):
    sys.exit(0)
try:
    post("/api/v1/server", {"command": f"drop database {db}"})
except Exception:
    pass
post("/api/v1/server", {"command": f"create database {db}"})
t = time.time()
cypher("CREATE INDEX FOR (n:Item) ON (n.idx)")
step = 20000
for lo in range(0, nodes, step):
    hi = min(nodes, lo + step) - 1
    for label, m in (("Alpha", 0), ("Beta", 1), ("Gamma", 2)):
        cypher(f"""UNWIND range($lo, $hi) AS i WITH i WHERE i % 3 = {m}
CREATE (:Item:{label} {{idx: i, name: 'item ' + toString(i), description: 'synthetic node number ' + toString(i) + ' of the benchmark graph',
  qty: i % 1000, score: i * 0.001, active: i % 2 = 0, tags: ['t' + toString(i % 10), 'u' + toString(i % 7)],
  born: date('2000-01-01'), seen: datetime('2024-01-01T00:00:00Z'), span: duration('P1DT2H'),
  at: point({{x: toFloat(i % 360) - 180.0, y: toFloat(i % 180) - 90.0, crs: 'WGS-84'}})}})""", lo=lo, hi=hi)
for lo in range(0, rels, step):
    hi = min(rels, lo + step) - 1
    cypher("""UNWIND range($lo, $hi) AS i
MATCH (a:Item {idx: i % $n}), (b:Item {idx: (i * 7919 + 13) % $n})
CREATE (a)-[:LINKS {w: toFloat(i % 100), since: date('2020-01-01'), note: 'rel ' + toString(i)}]->(b)""", lo=lo, hi=hi, n=nodes)
print(f"loaded {nodes} nodes and {rels} relationships in {time.time() - t:.0f} s", file=sys.stderr)
PYEOF

peak() { grep "Maximum resident" "$1" | awk '{print $NF}'; }
wall() { grep "Elapsed (wall" "$1" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }'; }

rm -rf "$WORK/ours"
/usr/bin/time -v env ENGRAM_MIGRATE_SOURCE_PASSWORD="$ARCADEDB_PASSWORD" "$BIN" snapshot --quiet --source "$URL" \
  --source-user root --fetch-size "$FETCH" --work-dir "$WORK/ours" > "$WORK/ours.log" 2> "$WORK/ours.time" \
  || { cat "$WORK/ours.time" >&2; exit 1; }
/usr/bin/time -v "$VENV/bin/python" scripts/peer_neo4j.py "$URL" root "$FETCH" > "$WORK/peer.log" 2> "$WORK/peer.time" \
  || { cat "$WORK/peer.time" >&2; exit 1; }
ours_s=$(wall "$WORK/ours.time"); ours_rss=$(( $(peak "$WORK/ours.time") / 1024 ))
peer_s=$(wall "$WORK/peer.time"); peer_rss=$(( $(peak "$WORK/peer.time") / 1024 ))
ours_rows=$("$VENV/bin/python" -c "import json,sys; print(sum(t['rows'] for t in json.load(open(sys.argv[1]))['tables']))" "$WORK/ours/snapshot/manifest.json")
peer_rows=$(tail -1 "$WORK/peer.log")
total=$((NODES + RELS))
[ "$ours_rows" = "$total" ] && [ "$peer_rows" = "$total" ] || { echo "record counts differ: ours $ours_rows, peer $peer_rows, graph $total" >&2; exit 1; }
printf "graph: %s nodes + %s relationships = %s records; fetch size %s; binary: %s profile\n" "$NODES" "$RELS" "$total" "$FETCH" "$PROFILE"
printf "%-52s %9s %12s %12s\n" what seconds records/s peak_RSS_MB
printf "%-52s %9.2f %12.0f %12s\n" "engram-migrate snapshot (neo4rs -> Arrow -> Parquet)" "$ours_s" "$(echo "$total / $ours_s" | bc -l)" "$ours_rss"
printf "%-52s %9.2f %12.0f %12s\n" "official Python driver (neo4j), records -> JSON" "$peer_s" "$(echo "$total / $peer_s" | bc -l)" "$peer_rss"
printf "ratio (Python driver time / ours): %.2fx; snapshot on disk: %s MB\n" "$(echo "$peer_s / $ours_s" | bc -l)" "$(du -sm "$WORK/ours/snapshot" | cut -f1)"
