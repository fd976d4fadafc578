"""The peer of the PostgreSQL-target benchmark: what a careful Python engineer would write to load an Engram
bundle's memories into PostgreSQL + pgvector: psycopg 3 binary COPY with pgvector's own adapter, one
connection, then the same HNSW index. Prints one JSON line: rows, copy seconds, index seconds.

    python peer_pg_target.py BUNDLE_DIR POSTGRES_URL SCHEMA
"""

import glob
import json
import os
import sys
import time

import numpy as np
import psycopg
import pyarrow.parquet as pq
from pgvector.psycopg import register_vector


def main() -> None:
    bundle, url, schema = sys.argv[1], sys.argv[2], sys.argv[3]
    dim = json.load(open(os.path.join(bundle, "bundle.json")))["embedding"]["dimension"]
    files = sorted(glob.glob(os.path.join(bundle, "spaces", "*", "memories", "*.parquet")))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"""CREATE TABLE {schema}.memories (
                  space text NOT NULL, id text NOT NULL, content jsonb NOT NULL, text text,
                  embedding vector({dim}), confidence real NOT NULL, activation real NOT NULL,
                  decay_rate real NOT NULL, created_at timestamptz, memory_type text NOT NULL,
                  source_kind text NOT NULL, source_name text NOT NULL, source_key jsonb NOT NULL,
                  PRIMARY KEY (space, id))"""
        )
        cols = ["space", "id", "content", "text", "embedding", "confidence", "activation", "decay_rate",
                "created_at", "memory_type", "source_kind", "source_name", "source_key"]
        types = ["text", "text", "jsonb", "text", "vector", "float4", "float4", "float4", "timestamptz",
                 "text", "text", "text", "jsonb"]
        rows = 0
        t0 = time.monotonic()
        with conn.cursor() as cur:
            with cur.copy(f"COPY {schema}.memories ({', '.join(cols)}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(types)
                for f in files:
                    for batch in pq.ParquetFile(f).iter_batches(batch_size=8192, columns=cols):
                        d = batch.to_pydict()
                        emb = batch.column("embedding").flatten().to_numpy().reshape(-1, dim)
                        for i in range(batch.num_rows):
                            copy.write_row([
                                d["space"][i], d["id"][i], d["content"][i], d["text"][i],
                                np.asarray(emb[i], dtype=np.float32), d["confidence"][i], d["activation"][i],
                                d["decay_rate"][i], d["created_at"][i], d["memory_type"][i],
                                d["source_kind"][i], d["source_name"][i], d["source_key"][i],
                            ])
                            rows += 1
        copy_s = time.monotonic() - t0
        t1 = time.monotonic()
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(f"SET max_parallel_maintenance_workers = {max(os.cpu_count() - 1, 0)}")
        conn.execute(f"CREATE INDEX ON {schema}.memories USING hnsw (embedding vector_cosine_ops)")
        index_s = time.monotonic() - t1
    print(json.dumps({"rows": rows, "copy_seconds": copy_s, "index_seconds": index_s}))


if __name__ == "__main__":
    main()
