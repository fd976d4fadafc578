#!/usr/bin/env bash
# PostgreSQL snapshot benchmark: fills a table of mixed types (default 1 000 000 rows) in a PostgreSQL 15 server
# started by scripts/services/postgres.sh, then in the same run times
#   - `engram-migrate snapshot` of that table (binary COPY into Arrow, partitions in parallel, Parquet + checksums), and
#   - DuckDB's postgres extension: ATTACH ... (TYPE postgres) then COPY ... TO 'x.parquet',
# each under /usr/bin/time -v, and prints rows/s, peak RSS and the ratio.
#
#   scripts/bench-postgres.sh [ROWS]      SKIP_BUILD=1 to reuse the release binary; BENCH_PG_PORT (default 55433)
#   WORKERS=N                             --parallel-workers for engram-migrate (default: cores)
#   BIN=PATH                              time this engram-migrate binary instead of building the release one
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram-migrate/target}"
ROWS="${1:-1000000}"
PORT="${BENCH_PG_PORT:-55433}"
missing=(); [ -x /usr/bin/time ] || missing+=(time); command -v bc >/dev/null || missing+=(bc)
[ ${#missing[@]} -eq 0 ] || { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
if [ -z "${BIN:-}" ]; then
  [ -n "${SKIP_BUILD:-}" ] || cargo build --release --bins >&2
  BIN="$CARGO_TARGET_DIR/release/engram-migrate"
fi
WORK="${BENCH_DIR:-/tmp/engram-migrate-bench}/pg"
mkdir -p "$WORK"

# The peer: DuckDB with its postgres extension, from PyPI (the extension's version must match DuckDB's).
VENV="$HOME/.cache/engram-migrate/bench-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import duckdb, duckdb_extension_postgres_scanner" 2>/dev/null \
  || "$VENV/bin/pip" install -q "duckdb==1.5.5" "duckdb-extension-postgres-scanner==1.5.5" >&2
EXT=$("$VENV/bin/python" -c "import duckdb_extension_postgres_scanner as m, glob, os; print(glob.glob(os.path.join(os.path.dirname(m.__file__), 'extensions/*/*.duckdb_extension'))[0])")

BASE=$(bash scripts/services/postgres.sh start "$PORT" | tail -1)
URL="${BASE%/postgres}/bench"
PSQL=(runuser -u postgres -- env PGOPTIONS="-c client_min_messages=warning" psql -h "/tmp/engram-migrate-pg-$PORT" -p "$PORT" -U postgres -qAt -v ON_ERROR_STOP=1)
if [ "$("${PSQL[@]}" -d postgres -c "SELECT count(*) FROM pg_database WHERE datname = 'bench'")" = 0 ]; then
  "${PSQL[@]}" -d postgres -c "CREATE DATABASE bench"
fi
have=-1
if [ "$("${PSQL[@]}" -d bench -c "SELECT to_regclass('bench_mixed') IS NOT NULL")" = t ]; then
  have=$("${PSQL[@]}" -d bench -c "SELECT count(*) FROM bench_mixed")
fi
if [ "$have" != "$ROWS" ]; then
  echo "filling bench_mixed with $ROWS rows" >&2
  "${PSQL[@]}" -d bench <<SQL
DROP TABLE IF EXISTS bench_mixed;
CREATE TABLE bench_mixed (
  id bigint PRIMARY KEY, qty integer, price numeric(12, 2), score double precision, active boolean,
  name text, note text, tags text[], payload jsonb, ref uuid, born date, at timestamptz
);
INSERT INTO bench_mixed
SELECT g, g % 1000, round((g % 100000) / 7.0, 2), g * 0.001, g % 3 = 0,
       'customer ' || g, repeat(md5(g::text), 2), ARRAY['t' || (g % 10), 'u' || (g % 7)],
       jsonb_build_object('n', g, 'k', 'v' || (g % 13)), md5(g::text)::uuid,
       DATE '2000-01-01' + (g % 9000), TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * interval '1 second'
FROM generate_series(1, $ROWS) g;
ANALYZE bench_mixed;
SQL
fi

peak() { grep "Maximum resident" "$1" | awk '{print $NF}'; }
wall() { grep "Elapsed (wall" "$1" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }'; }

rm -rf "$WORK/ours" "$WORK/duck.parquet"
/usr/bin/time -v "$BIN" snapshot --quiet --source "$URL" --include bench_mixed --work-dir "$WORK/ours" \
  ${WORKERS:+--parallel-workers $WORKERS} > "$WORK/ours.log" 2> "$WORK/ours.time" || { cat "$WORK/ours.time" >&2; exit 1; }
/usr/bin/time -v "$VENV/bin/python" - "$EXT" "$PORT" "$WORK/duck.parquet" > "$WORK/duck.log" 2> "$WORK/duck.time" <<'PYEOF' || { cat "$WORK/duck.time" >&2; exit 1; }
import sys, duckdb
ext, port, out = sys.argv[1:]
c = duckdb.connect()
c.execute(f"LOAD '{ext}'")
c.execute(f"ATTACH 'host=127.0.0.1 port={port} dbname=bench user=postgres password=engram' AS pg (TYPE postgres, READ_ONLY)")
c.execute(f"COPY pg.public.bench_mixed TO '{out}' (FORMAT parquet)")
print(c.execute(f"SELECT count(*) FROM '{out}'").fetchone()[0])
PYEOF
ours_s=$(wall "$WORK/ours.time"); ours_rss=$(( $(peak "$WORK/ours.time") / 1024 ))
duck_s=$(wall "$WORK/duck.time"); duck_rss=$(( $(peak "$WORK/duck.time") / 1024 ))
ours_rows=$("$VENV/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['tables'][0]['rows'])" "$WORK/ours/snapshot/manifest.json")
duck_rows=$(tail -1 "$WORK/duck.log")
[ "$ours_rows" = "$ROWS" ] && [ "$duck_rows" = "$ROWS" ] || { echo "row counts differ: ours $ours_rows, duckdb $duck_rows, table $ROWS" >&2; exit 1; }
printf "%-44s %9s %12s %12s\n" what seconds rows/s peak_RSS_MB
printf "%-44s %9.2f %12.0f %12s\n" "engram-migrate snapshot" "$ours_s" "$(echo "$ROWS / $ours_s" | bc -l)" "$ours_rss"
printf "%-44s %9.2f %12.0f %12s\n" "DuckDB postgres extension COPY TO parquet" "$duck_s" "$(echo "$ROWS / $duck_s" | bc -l)" "$duck_rss"
printf "ratio (DuckDB time / ours): %.2fx; files: ours %s MB, DuckDB %s MB\n" "$(echo "$duck_s / $ours_s" | bc -l)" \
  "$(du -sm "$WORK/ours/snapshot" | cut -f1)" "$(du -sm "$WORK/duck.parquet" | cut -f1)"
