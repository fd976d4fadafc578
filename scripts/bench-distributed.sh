#!/usr/bin/env bash
# Local engine vs a Ballista cluster of this binary on the same machine (issue 20), same input, same run, release
# build with the `distributed` feature:
#   local        `run` with --engine local (the default)
#   cluster      `run` with --engine ballista://127.0.0.1:PORT: one scheduler and EXECUTORS executors of SLOTS
#                task slots each (scripts/services/ballista.sh), all on this machine
# For each: wall seconds, peak RSS of the client process (/usr/bin/time -v), the per-stage table of report.json,
# and for the cluster the jobs and the tasks each executor ran. The two bundles are compared (memories, edges,
# checksums). On a 2-core machine the cluster cannot be faster: its executors share the client's cores, and
# results travel through Arrow Flight on loopback; the figures show the cost of distribution, not its scaling.
#
#   scripts/bench-distributed.sh [ROWS]     default 200000 orders (+ 20000 customers)
#   EXECUTORS=2 SLOTS=1 PORT=50350 SKIP_BUILD=1 MODEL=DIR (embed with model2vec:DIR instead of hashing)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram-migrate/target}"
missing=(); [ -x /usr/bin/time ] || missing+=(time); command -v sqlite3 >/dev/null || missing+=(sqlite3); command -v curl >/dev/null || missing+=(curl)
[ ${#missing[@]} -eq 0 ] || { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bins --features distributed >&2
BIN="$CARGO_TARGET_DIR/release/engram-migrate"
export ENGRAM_MIGRATE_BIN="$BIN"
PY=$(bash scripts/python-env.sh | tail -1)
N="${1:-200000}"
PORT="${PORT:-50350}"
EXECUTORS="${EXECUTORS:-2}"
SLOTS="${SLOTS:-1}"
WORK="${BENCH_DIR:-/tmp/engram-migrate-bench-distributed}"
mkdir -p "$WORK"
DB="$WORK/in-$N.sqlite"
[ -f "$DB" ] || bash scripts/gen-large-sqlite.sh "$N" "$DB" >&2
EMBED=()
[ -z "${MODEL:-}" ] || EMBED=(--embedding-provider "model2vec:$MODEL")

peak() { grep "Maximum resident" "$1" | awk '{print $NF}'; }
wall() { grep "Elapsed (wall" "$1" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }'; }

URL=$(bash scripts/services/ballista.sh start "$PORT" "$EXECUTORS" "$SLOTS" | tail -1)
trap 'bash scripts/services/ballista.sh stop "$PORT"' EXIT

echo "== $(date -u +%F) release build (--features distributed), $(nproc) cores, $N orders, $EXECUTORS executors x $SLOTS slots"
printf "%-10s %10s %12s\n" engine seconds peak_RSS_MB
for engine in local "$URL"; do
  name=$([ "$engine" = local ] && echo local || echo cluster)
  rm -rf "$WORK/$name.bundle" "$WORK/$name.bundle.work"
  /usr/bin/time -v "$BIN" run --quiet "${EMBED[@]}" --engine "$engine" --source "$DB" --target "$WORK/$name.bundle" \
    > "$WORK/$name.log" 2> "$WORK/time-$name.log" || { cat "$WORK/time-$name.log" >&2; exit 1; }
  printf "%-10s %10.1f %12s\n" "$name" "$(wall "$WORK/time-$name.log")" "$(( $(peak "$WORK/time-$name.log") / 1024 ))"
  "$PY" - "$WORK/$name.bundle.work/report.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
for s in r["stages"]:
    print(f"{'':<10}   stage {s['stage']:<14} {s['seconds']:>8.1f} s")
c = r.get("cluster")
if c:
    print(f"{'':<10}   {len(c['jobs'])} jobs; tasks per executor: " + ", ".join(f"{k[:8]} {v}" for k, v in c["tasks_per_executor"].items()))
PYEOF
done
"$PY" - "$WORK/local.bundle/bundle.json" "$WORK/cluster.bundle/bundle.json" <<'PYEOF'
import json, sys
def content(p):
    b = json.load(open(p))
    return ([(s["space"], s["memories"]["rows"], s["memories"]["checksum"], s["edges"]["rows"], s["edges"]["checksum"]) for s in b["spaces"]],
            b["orphans"]["checksum"], b["totals"])
same = content(sys.argv[1]) == content(sys.argv[2])
print("bundles equal (memories, edges, orphans, checksums):", same)
sys.exit(0 if same else 1)
PYEOF
