#!/usr/bin/env bash
# A throw-away PostgreSQL 15 + pgvector server on loopback for tests and benchmarks.
#
#   postgres.sh install        apt packages (server, -dev for the extension build) and pgvector built from Debian's
#                              source package of the next release (pgvector is not packaged for bookworm)
#   postgres.sh start [PORT]   initdb (first time) + start on 127.0.0.1:PORT (default 55432), CREATE EXTENSION vector;
#                              prints the connection URL as its last line
#   postgres.sh load DB [PORT] (re)creates database DB and loads fixtures/postgres/*.sql into it, in name order
#   postgres.sh stop [PORT]    stops it and removes its data directory
#
# PostgreSQL refuses to run as root, so the cluster runs as the `postgres` user with its data under /tmp.
# fsync is off: these clusters hold test data only.
set -euo pipefail
PGBIN=/usr/lib/postgresql/15/bin
cmd="${1:-}"
PORT="${2:-55432}"
DATA="/tmp/engram-migrate-pg-$PORT"

install() {
  local need=()
  [ -x "$PGBIN/postgres" ] || need+=(postgresql-15)
  [ -x "$PGBIN/pg_config" ] || [ -x /usr/bin/pg_config ] || need+=(postgresql-server-dev-15)
  dpkg -s postgresql-server-dev-15 >/dev/null 2>&1 || need+=(postgresql-server-dev-15)
  command -v psql >/dev/null 2>&1 || need+=(postgresql-client-15)
  command -v make >/dev/null 2>&1 || need+=(make)
  dpkg -s dpkg-dev >/dev/null 2>&1 || need+=(dpkg-dev)
  if [ ${#need[@]} -gt 0 ]; then
    echo "postgres.sh: installing ${need[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
  fi
  if [ -f /usr/share/postgresql/15/extension/vector.control ]; then
    return 0
  fi
  echo "postgres.sh: building pgvector from Debian's source package (trixie)" >&2
  local tmp; tmp="$(mktemp -d)"
  # A private apt configuration: the system's sources stay untouched. The mirror is the one already configured.
  local uri
  uri="$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  if [ -z "$uri" ]; then
    uri="$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
  fi
  [ -n "$uri" ] || { echo "postgres.sh: cannot find the configured Debian mirror" >&2; exit 1; }
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/src"
  echo "deb-src [trusted=yes] $uri trixie main" > "$tmp/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=-" -o "Dir::State::Lists=$tmp/lists"
    -o "Dir::Cache=$tmp/cache" -o "APT::Sandbox::User=root")
  apt-get "${opts[@]}" update -qq >&2
  (cd "$tmp/src" && apt-get "${opts[@]}" source --download-only pgvector >&2)
  local tarball; tarball="$(ls "$tmp"/src/pgvector_*.orig.tar.* | head -1)"
  mkdir -p "$tmp/build" && tar -xf "$tarball" -C "$tmp/build" --strip-components=1
  make -s -C "$tmp/build" PG_CONFIG="$PGBIN/pg_config" >&2
  make -s -C "$tmp/build" PG_CONFIG="$PGBIN/pg_config" install >&2
  rm -rf "$tmp"
}

start() {
  install
  if [ ! -f "$DATA/PG_VERSION" ]; then
    mkdir -p "$DATA" && chown postgres: "$DATA"
    runuser -u postgres -- "$PGBIN/initdb" -D "$DATA" --auth=trust -E UTF8 --locale=C.UTF-8 -N -U postgres >/dev/null
    # Password authentication over TCP so a wrong password is really rejected; the socket stays trusted.
    cat > "$DATA/pg_hba.conf" <<HBA
local all all trust
host  all all 127.0.0.1/32 scram-sha-256
HBA
  fi
  if ! runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    if ! runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 start \
      -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >/dev/null; then
      echo "postgres.sh: the server on port $PORT did not start; its log:" >&2
      tail -20 "$DATA/server.log" >&2
      ss -tanp 2>/dev/null | grep ":$PORT " >&2 || true
      exit 1
    fi
  fi
  local psql=(runuser -u postgres -- psql -h "$DATA" -p "$PORT" -U postgres -qAt -v ON_ERROR_STOP=1)
  "${psql[@]}" -c "ALTER USER postgres PASSWORD 'engram'" >/dev/null
  "${psql[@]}" -c "CREATE EXTENSION IF NOT EXISTS vector" >/dev/null
  echo "postgres://postgres:engram@127.0.0.1:$PORT/postgres"
}

stop() {
  if [ -f "$DATA/PG_VERSION" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$DATA"
  fi
}

load() {
  local db="$2"; local port="${3:-55432}"; local data="/tmp/engram-migrate-pg-$port"
  local root; root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  local psql=(runuser -u postgres -- env PGOPTIONS="-c client_min_messages=warning" psql -h "$data" -p "$port" -U postgres -qAt -v ON_ERROR_STOP=1)
  "${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
  "${psql[@]}" -d postgres -c "CREATE DATABASE \"$db\"" >/dev/null
  for f in "$root"/fixtures/postgres/*.sql; do
    "${psql[@]}" -d "$db" -f - < "$f" >/dev/null
  done
  echo "postgres://postgres:engram@127.0.0.1:$port/$db"
}

case "$cmd" in
  load) PORT="${3:-55432}"; load "$@" ;;
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install | start [PORT] | stop [PORT]" >&2; exit 2 ;;
esac
