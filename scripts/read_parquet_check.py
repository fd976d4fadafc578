#!/usr/bin/env python3
"""Cross-check Parquet files written by engram-migrate with two independent readers.

Usage: read_parquet_check.py DIR

Walks DIR recursively and reads every *.parquet file fully with pyarrow
(pyarrow.parquet.read_table) and with duckdb (count(*) and a SELECT * of all
columns, fetched as Arrow batches, to force decoding of every page). Prints one JSON object:

  {"files": N, "per_file": {"rel/path.parquet": {"pyarrow_rows": n, "duckdb_rows": n}}}

Exits 1 (message on stderr) if no parquet file is found, if any file fails to
read in either reader, or if the row counts disagree. Needs pyarrow and duckdb:
run it with the python from scripts/python-env.sh.
"""
from __future__ import annotations

import json
import os
import sys


def fail(msg: str) -> "None":
    print(f"read_parquet_check: {msg}", file=sys.stderr)
    sys.exit(1)


def find_parquet(root: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".parquet"):
                found.append(os.path.join(dirpath, name))
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print("usage: read_parquet_check.py DIR", file=sys.stderr)
        return 2
    root = argv[1]
    if not os.path.isdir(root):
        fail(f"not a directory: {root}")
    try:
        import duckdb
        import pyarrow.parquet as pq
    except ImportError as e:
        fail(f"{e}; run with the python printed by scripts/python-env.sh")

    files = find_parquet(root)
    if not files:
        fail(f"no *.parquet file found under {root}")

    con = duckdb.connect()
    per_file: dict[str, dict[str, int]] = {}
    errors: list[str] = []
    for path in files:
        rel = os.path.relpath(path, root)
        entry: dict[str, int] = {}
        try:
            entry["pyarrow_rows"] = pq.read_table(path).num_rows
        except Exception as e:  # noqa: BLE001 - report any reader failure
            errors.append(f"{rel}: pyarrow failed to read: {type(e).__name__}: {e}")
        try:
            count = con.sql("SELECT count(*) FROM read_parquet(?)", params=[path]).fetchall()[0][0]
            # Fetch every column as Arrow record batches, so all pages are
            # decoded without holding the file in memory at once. (Arrow, not
            # fetchmany(): Python tuples of TIMESTAMPTZ values need pytz.)
            scan = con.sql("SELECT * FROM read_parquet(?)", params=[path])
            # duckdb >= 2.0: to_arrow_reader(); 1.x: fetch_record_batch().
            to_reader = getattr(scan, "to_arrow_reader", None) or scan.fetch_record_batch
            reader = to_reader(65536)
            fetched = 0
            for batch in reader:
                fetched += batch.num_rows
            if fetched != count:
                errors.append(f"{rel}: duckdb count(*) = {count} but SELECT * returned {fetched} rows")
            entry["duckdb_rows"] = int(count)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{rel}: duckdb failed to read: {type(e).__name__}: {e}")
        if "pyarrow_rows" in entry and "duckdb_rows" in entry and entry["pyarrow_rows"] != entry["duckdb_rows"]:
            errors.append(f"{rel}: row counts differ: pyarrow {entry['pyarrow_rows']}, duckdb {entry['duckdb_rows']}")
        per_file[rel] = entry

    print(json.dumps({"files": len(files), "per_file": per_file}, ensure_ascii=False, sort_keys=True))
    if errors:
        for err in errors:
            print(f"read_parquet_check: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
