#!/usr/bin/env bash
# Idempotently provides a Python venv with pyarrow and duckdb, used by the
# tests and scripts that cross-check the Parquet files this tool writes.
#
#   PY=$(scripts/python-env.sh | tail -1)
#
# The venv lives at ${ENGRAM_MIGRATE_CACHE:-$HOME/.cache/engram-migrate}/venv.
# If both modules already import, nothing is installed (fast path). Progress
# goes to stderr; the last line on stdout is the venv's python path.
set -euo pipefail

CACHE="${ENGRAM_MIGRATE_CACHE:-$HOME/.cache/engram-migrate}"
VENV="$CACHE/venv"
PY="$VENV/bin/python"
PKGS=(pyarrow duckdb)

importable() {
  [ -x "$PY" ] && "$PY" -c 'import pyarrow, pyarrow.parquet, duckdb' >/dev/null 2>&1
}

if ! importable; then
  command -v python3 >/dev/null 2>&1 || { echo "python-env: python3 not found" >&2; exit 1; }
  mkdir -p "$CACHE"
  if [ ! -x "$PY" ] || ! "$PY" -m pip --version >/dev/null 2>&1; then
    echo "python-env: creating venv at $VENV" >&2
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >&2; then
      echo "python-env: 'python3 -m venv' failed (Debian: apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
  echo "python-env: installing ${PKGS[*]} into $VENV" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check "${PKGS[@]}" >&2
  importable || { echo "python-env: ${PKGS[*]} still not importable from $PY" >&2; exit 1; }
fi

echo "$PY"
