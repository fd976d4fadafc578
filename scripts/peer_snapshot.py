"""Peer for the snapshot benchmark: stage every table of a SQLite file into Parquet with Python's sqlite3 and
pyarrow, batch by batch (what one would write by hand). Types are inferred by pyarrow from the values.

    python peer_snapshot.py DB OUTDIR
"""
import os
import sqlite3
import sys

import pyarrow as pa
import pyarrow.parquet as pq

BATCH = 8192


def main(db: str, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
    for t in tables:
        cur = con.execute(f'SELECT * FROM "{t}"')
        names = [d[0] for d in cur.description]
        writer = None
        while True:
            rows = cur.fetchmany(BATCH)
            if not rows:
                break
            cols = list(zip(*rows))
            batch = pa.table({n: pa.array(list(c)) for n, c in zip(names, cols)})
            if writer is None:
                writer = pq.ParquetWriter(os.path.join(out, f"{t}.parquet"), batch.schema, compression="zstd")
            writer.write_table(batch.cast(writer.schema))
        if writer:
            writer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
