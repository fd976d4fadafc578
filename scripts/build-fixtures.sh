#!/usr/bin/env bash
# Rebuilds fixtures/codegraph.sqlite from fixtures/codegraph.sql.
# The script is deterministic: two builds give the same `sqlite3 ... .dump`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SQL="$ROOT/fixtures/codegraph.sql"
OUT="$ROOT/fixtures/codegraph.sqlite"

command -v sqlite3 >/dev/null 2>&1 || { echo "build-fixtures: sqlite3 CLI not found (Debian: apt-get install sqlite3)" >&2; exit 1; }

# Build into a temp file next to the target, then move it in place, so a
# failed build never leaves a half-written fixture behind.
TMP="$OUT.tmp.$$"
trap 'rm -f "$TMP" "$TMP-journal"' EXIT
rm -f "$TMP" "$TMP-journal"
sqlite3 -bail "$TMP" < "$SQL"
sqlite3 "$TMP" 'VACUUM;'
rm -f "$OUT" "$OUT-journal" "$OUT-wal" "$OUT-shm"
mv "$TMP" "$OUT"

echo "built $OUT: $(sqlite3 "$OUT" 'SELECT count(*) FROM nodes') nodes, $(sqlite3 "$OUT" 'SELECT count(*) FROM edges') edges" >&2
