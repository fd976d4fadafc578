#!/usr/bin/env bash
# Benchmark of the Redis sources, side by side with peers, same data, same run:
#   - the RDB reader (engram-migrate's snapshot of a dump, and the bare reader in tools/rdb-scan) vs rdbtools'
#     JSON output (`rdb --command json`, PyPI rdbtools 0.1.15 with python-lzf)
#   - the live source (engram-migrate snapshot of redis://) vs `redis-cli --scan` (key names only; redis-cli 7.0
#     has no --count, so it scans with the server default COUNT 10)
# rdbtools reads RDB 9 at most (Redis 5/6): the dump holds only types that RDB 9 has (strings, and hashes, sorted
# sets and sets in their hash-table/skiplist encodings: the listpack limits are set to 0; no lists, which Redis 7
# writes as quicklist 2), and rdbtools reads a copy whose header says 0009 (it does not check the checksum).
# Prints MB/s, keys/s, peak RSS and ratios as a Markdown table.
#
#   scripts/bench-redis.sh [KEYS]      KEYS string keys (plus hashes, sorted sets, lists, sets: KEYS/10 each)
#                                      [default: 2000000, a dump of ~300 MB]
#
# Uses Redis 7 from scripts/services/redis.sh on port 56399 (stopped at the end), a venv for rdbtools in the
# cache, and the engram-migrate binary of $CARGO_TARGET_DIR (BIN=... to choose another).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KEYS="${1:-2000000}"
PORT=56399
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram-migrate/target}"
BIN="${BIN:-$CARGO_TARGET_DIR/debug/engram-migrate}"
CACHE="${ENGRAM_MIGRATE_CACHE:-$HOME/.cache/engram-migrate}"
WORK="$(mktemp -d /tmp/bench-redis.XXXXXX)"
trap 'bash scripts/services/redis.sh stop $PORT; rm -rf "$WORK"' EXIT

URL="$(bash scripts/services/redis.sh start 7 $PORT | tail -1)"
CLI=(redis-cli -p $PORT -a engram --no-auth-warning)

echo "filling: $KEYS strings + $((KEYS / 10)) each of hashes, sorted sets, sets" >&2
"${CLI[@]}" FLUSHALL >/dev/null
"${CLI[@]}" CONFIG SET rdbcompression no >/dev/null   # a dump of real size (DEBUG POPULATE values compress to nothing)
for k in hash-max-listpack-entries zset-max-listpack-entries set-max-intset-entries; do
  "${CLI[@]}" CONFIG SET $k 0 >/dev/null
done
"${CLI[@]}" DEBUG POPULATE "$KEYS" str 100 >/dev/null
python3 - "$((KEYS / 10))" <<'PY' | "${CLI[@]}" --pipe >/dev/null
import sys
n = int(sys.argv[1])
def cmd(*a):
    out = [b"*%d\r\n" % len(a)]
    for x in a:
        x = x if isinstance(x, bytes) else str(x).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(x), x))
    return b"".join(out)
w = sys.stdout.buffer
for i in range(n):
    w.write(cmd("HSET", f"h:{i}", "name", f"user {i}", "email", f"u{i}@example.org", "age", i % 90))
    w.write(cmd("ZADD", f"z:{i}", 1, "a", 2.5, "b", i, "c"))
    w.write(cmd("SADD", f"s:{i}", "red", "green", i))
    if i % 10 == 0:
        w.write(cmd("EXPIRE", f"h:{i}", 86400))
PY
"${CLI[@]}" SAVE >/dev/null
RDB="/tmp/engram-migrate-redis-$PORT/dump.rdb"
cp "$RDB" "$WORK/dump.rdb"
SIZE=$(stat -c %s "$WORK/dump.rdb")
NKEYS=$("${CLI[@]}" DBSIZE)
echo "dump: $SIZE bytes, $NKEYS keys" >&2

# rdbtools (Python, with its C LZF module) in its own venv.
VENV="$CACHE/rdbtools-venv"
if [ ! -x "$VENV/bin/rdb" ] || ! "$VENV/bin/python" -c 'import lzf' 2>/dev/null; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check rdbtools python-lzf >&2
fi
cp "$WORK/dump.rdb" "$WORK/dump9.rdb"
printf '0009' | dd of="$WORK/dump9.rdb" bs=1 seek=5 conv=notrunc status=none

# The bare reader, built in release (std only, seconds to build).
cargo build --quiet --release --manifest-path tools/rdb-scan/Cargo.toml --target-dir "$CACHE/rdb-scan-target" >&2
SCAN="$CACHE/rdb-scan-target/release/rdb-scan"

# name, command: prints "seconds max_rss_kb"
measure() {
  local out="$WORK/time.$$"
  command -v /usr/bin/time >/dev/null || { apt-get install -y -qq time >&2; }
  /usr/bin/time -f "%e %M" -o "$out" "$@" >/dev/null 2>"$WORK/stderr" || { cat "$WORK/stderr" >&2; exit 1; }
  cat "$out"
}

declare -A T R
T[snap_rdb]=0; R[snap_rdb]=0; T[snap_live]=0; R[snap_live]=0
read -r T[scan] R[scan] < <(measure "$SCAN" "$WORK/dump.rdb")
if [ -x "$BIN" ]; then
  read -r T[snap_rdb] R[snap_rdb] < <(measure "$BIN" snapshot --quiet --source "$WORK/dump.rdb" --work-dir "$WORK/w1")
else
  echo "no engram-migrate binary at $BIN: its rows are left out (build it, or BIN=...)" >&2
fi
read -r T[rdbtools] R[rdbtools] < <(measure "$VENV/bin/rdb" --command json "$WORK/dump9.rdb")
if [ -x "$BIN" ]; then
  read -r T[snap_live] R[snap_live] < <(measure "$BIN" snapshot --quiet --source "$URL" --work-dir "$WORK/w2")
fi
read -r T[cli_scan] R[cli_scan] < <(measure "${CLI[@]}" --scan)

mb=$(python3 -c "print($SIZE/1e6)")
row() { python3 - "$1" "$2" "$3" "$mb" "$NKEYS" <<'PY'
import sys
name, t, rss, mb, keys = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
print(f"| {name} | {t:.2f} | {mb / t:.1f} | {keys / t:,.0f} | {rss / 1024:.0f} |" if t > 0 else f"| {name} | not run | | | |")
PY
}
echo
echo "dump: $(python3 -c "print(f'{$SIZE/1e6:.0f}')") MB, $NKEYS keys (RDB 10, Redis 7.0), binary: $BIN"
echo
echo "| reader | seconds | MB/s | keys/s | peak RSS MB |"
echo "|---|---|---|---|---|"
row "rdb-scan (the RDB reader alone, release)" "${T[scan]}" "${R[scan]}"
row "engram-migrate snapshot of the dump (reader + Parquet)" "${T[snap_rdb]}" "${R[snap_rdb]}"
row "rdbtools 'rdb --command json'" "${T[rdbtools]}" "${R[rdbtools]}"
row "engram-migrate snapshot of the live server (values + Parquet)" "${T[snap_live]}" "${R[snap_live]}"
row "redis-cli --scan (key names only)" "${T[cli_scan]}" "${R[cli_scan]}"
echo
python3 -c "
r = lambda a, b: f'{a/b:.2f}x' if a > 0 and b > 0 else 'n/a'
print('ratios (time): rdbtools / rdb-scan =', r(${T[rdbtools]}, ${T[scan]}), ', rdbtools / snapshot of the dump =', r(${T[rdbtools]}, ${T[snap_rdb]}), ', live snapshot / redis-cli --scan =', r(${T[snap_live]}, ${T[cli_scan]}))"
