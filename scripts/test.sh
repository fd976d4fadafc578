#!/usr/bin/env bash
# Installs what the tests need and runs them: the unit tests (no servers) and the integration tests (the real
# binary on real SQLite files and a real PostgreSQL server; pyarrow and DuckDB cross-read every Parquet file it writes).
#
# The cargo target directory is $CARGO_TARGET_DIR, else ./target (the one `cargo run` in the README uses, so a
# newcomer's `cargo run` build is reused: ~14 min cold on 2 idle cores, dev profile, plus ~10 min for the build
# with the `distributed` feature); .ci/run sets it to a cache outside the clone (~/.cache/engram-migrate/target) so
# later CI runs are warm (a whole cold CI run: 30 min 37 s on 2026-12-07).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

need_apt=()
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_apt[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
fi
bash scripts/python-env.sh >/dev/null

# Every server the tests and the guides start listens on a fixed loopback port, and those ports lie inside the
# kernel's ephemeral range (32768-60999): a client connection of another test could be given one of them as its
# local port for a moment, and a server started then fails to bind (seen in CI: ArcadeDB's HTTP port, then a
# guide's PostgreSQL). Reserve them, so the kernel never hands them out as ephemeral ports (root only; a machine
# that refuses it runs the tests anyway).
RESERVED="55400-55600,56370-56500,57400-57450,57680-58000"
if [ -w /proc/sys/net/ipv4/ip_local_reserved_ports ]; then
  echo "$RESERVED" > /proc/sys/net/ipv4/ip_local_reserved_ports || echo "test.sh: could not reserve ports $RESERVED" >&2
else
  echo "test.sh: cannot reserve the test servers' ports ($RESERVED): a rare port clash may fail a test" >&2
fi

# The integration tests start a PostgreSQL 15 + pgvector server through scripts/services/postgres.sh (installed
# here first, so a cold machine pays the apt and pgvector build once, outside any test's time); stop it at the end.
export ENGRAM_TEST_PG_PORT="${ENGRAM_TEST_PG_PORT:-55432}"
bash scripts/services/postgres.sh install
# The Neo4j-source tests talk Bolt to ArcadeDB (scripts/services/arcadedb.sh: PyPI wheel with its own Java).
export ENGRAM_TEST_ARCADEDB_PORT="${ENGRAM_TEST_ARCADEDB_PORT:-57687}"
bash scripts/services/arcadedb.sh install

# The Redis tests start Redis 6.2, 7.0, 8.2 and 8.2 with ReJSON through scripts/services/redis.sh; install them first.
bash scripts/services/redis.sh install
# One trap for every server the tests may have started (a second `trap ... EXIT` would replace the first).
trap 'bash scripts/services/postgres.sh stop "$ENGRAM_TEST_PG_PORT"; bash scripts/services/arcadedb.sh stop "$ENGRAM_TEST_ARCADEDB_PORT"; for p in 56378 56379 56380 56381; do bash scripts/services/redis.sh stop $p; done' EXIT

# The model2vec tests use the real potion-base-8M files: fetched once (sha256-checked) into the cache outside
# the clone; with ENGRAM_REQUIRE_MODELS=1 a missing model fails those tests instead of skipping them.
ENGRAM_MODEL2VEC_DIR="$(bash scripts/models.sh potion-base-8M | tail -1)"
export ENGRAM_MODEL2VEC_DIR ENGRAM_REQUIRE_MODELS=1

# Benches are not built by `cargo test`; compile them (dev profile, shared artifacts) so a changed type cannot
# leave a benchmark broken until someone runs it.
# Everything is tested with the optional `distributed` feature on (a superset: the Ballista engine's tests start a
# real scheduler and two executors of this binary on loopback); the lean default build, what `cargo install` and
# the README's first command build, is compiled too so that it cannot break unseen.
if [ "$#" -eq 0 ]; then
  cargo build --bins
  cargo test --features distributed --benches --no-run
fi
cargo test --features distributed --no-fail-fast "$@"
