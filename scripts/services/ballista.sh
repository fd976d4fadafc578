#!/usr/bin/env bash
# A Ballista cluster on loopback made of this tool's own binary (build feature `distributed`): one scheduler and
# N executors, each a separate process, for `--engine ballista://127.0.0.1:PORT`, the guide and the benchmarks.
#
#   ballista.sh start [PORT] [EXECUTORS] [SLOTS]   scheduler on 127.0.0.1:PORT (default 50050), EXECUTORS executors
#                                                  (default 2) of SLOTS concurrent tasks each (default 1) on the
#                                                  ports after it; waits until every executor has registered and
#                                                  prints the engine URL as its last line
#   ballista.sh stop [PORT]                        stops the cluster of PORT and removes its directory
#   ballista.sh status [PORT]                      prints the scheduler's job list (GET /engram/v1/jobs)
#
# The binary: $ENGRAM_MIGRATE_BIN, default "$CARGO_TARGET_DIR/debug/engram-migrate" (CARGO_TARGET_DIR defaulting
# to ./target). Logs, pids and the executors' shuffle files live in /tmp/engram-migrate-ballista-PORT.
set -euo pipefail
cmd="${1:-}"
PORT="${2:-50050}"
DIR="/tmp/engram-migrate-ballista-$PORT"
BIN="${ENGRAM_MIGRATE_BIN:-${CARGO_TARGET_DIR:-$(pwd)/target}/debug/engram-migrate}"

jobs_url() { echo "http://127.0.0.1:$PORT/engram/v1/jobs"; }

executors_up() {
  curl -sf "$(jobs_url)" 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["executors"]))' 2>/dev/null || echo 0
}

stop() {
  if [ -d "$DIR" ]; then
    for pidfile in "$DIR"/*.pid; do
      [ -e "$pidfile" ] || continue
      kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    sleep 0.5
    for pidfile in "$DIR"/*.pid; do
      [ -e "$pidfile" ] || continue
      kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    done
    rm -rf "$DIR"
  fi
}

case "$cmd" in
  start)
    N="${3:-2}"
    SLOTS="${4:-1}"
    [ -x "$BIN" ] || { echo "ballista.sh: no binary at $BIN (build with --features distributed)" >&2; exit 1; }
    "$BIN" scheduler --help >/dev/null 2>&1 || {
      echo "ballista.sh: $BIN has no scheduler: build it with --features distributed" >&2; exit 1; }
    stop
    mkdir -p "$DIR"
    "$BIN" scheduler --port "$PORT" >"$DIR/scheduler.log" 2>&1 &
    echo $! >"$DIR/scheduler.pid"
    for i in $(seq 1 "$N"); do
      # Each executor takes two ports (results, gRPC): 10 apart leaves room.
      eport=$((PORT + 10 * i))
      mkdir -p "$DIR/executor-$i"
      "$BIN" executor --scheduler "127.0.0.1:$PORT" --port "$eport" --concurrent-tasks "$SLOTS" \
        --work-dir "$DIR/executor-$i" >"$DIR/executor-$i.log" 2>&1 &
      echo $! >"$DIR/executor-$i.pid"
    done
    # Up to 60 s: on a loaded 2-core machine (the test suite beside it) executors can take a while to register.
    for _ in $(seq 1 600); do
      [ "$(executors_up)" = "$N" ] && { echo "ballista://127.0.0.1:$PORT"; exit 0; }
      sleep 0.1
    done
    echo "ballista.sh: the cluster on $PORT did not come up; logs in $DIR:" >&2
    tail -n 20 "$DIR"/*.log >&2 || true
    stop
    exit 1
    ;;
  stop) stop ;;
  status) curl -sf "$(jobs_url)"; echo ;;
  *) echo "usage: ballista.sh start [PORT] [EXECUTORS] [SLOTS] | stop [PORT] | status [PORT]" >&2; exit 2 ;;
esac
