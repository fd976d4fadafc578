"""The peer of the Neo4j-target benchmark: the seed's own approach with the official Python driver, `UNWIND`
batches of 1000 in managed write transactions (retried on transient errors): nodes (MERGE on id with both labels, the content's fields and the embedding as properties), then
relationships type by type. After the load it counts what the server holds, so a silently misapplied batch shows.
Prints one JSON line.

    python peer_neo4j_target.py BUNDLE_DIR BOLT_URL USER PASSWORD DATABASE
"""

import glob
import json
import os
import sys
import time

import pyarrow.parquet as pq
from neo4j import GraphDatabase

BATCH = 1000


def label_of(space: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in space.replace("-", "_").split("_") if p)


def write(session, query, rows) -> None:
    """One batch in a managed write transaction: the driver retries it on transient errors (ArcadeDB reports
    concurrent-modification conflicts as Neo.TransientError.Transaction.DeadlockDetected)."""
    session.execute_write(lambda tx: tx.run(query, rows=rows).consume())


def main() -> None:
    bundle, url, user, password, database = sys.argv[1:6]
    manifest = json.load(open(os.path.join(bundle, "bundle.json")))
    dim = manifest["embedding"]["dimension"]
    driver = GraphDatabase.driver(url, auth=(user, password))
    nodes = rels = 0
    t0 = time.monotonic()
    with driver.session(database=database) as s:
        s.run("CREATE CONSTRAINT peer_node_id IF NOT EXISTS FOR (n:Node) REQUIRE n.id IS UNIQUE").consume()
        for sp in manifest["spaces"]:
            space = sp["space"]
            label = sp.get("label") or label_of(space)
            q = f"UNWIND $rows AS r MERGE (n:Node:`{label}` {{id: r.id}}) SET n += r.props"
            for f in sorted(glob.glob(os.path.join(bundle, "spaces", space, "memories", "*.parquet"))):
                rows = []
                for b in pq.ParquetFile(f).iter_batches(batch_size=BATCH):
                    d = b.to_pydict()
                    for i in range(b.num_rows):
                        props = {k: (v if not isinstance(v, (dict, list)) else json.dumps(v))
                                 for k, v in json.loads(d["content"][i]).items() if v is not None and k != "id"}
                        props.update({"space": space, "embedding": d["embedding"][i],
                                      "confidence": d["confidence"][i]})
                        rows.append({"id": d["id"][i], "props": props})
                        if len(rows) == BATCH:
                            write(s, q, rows)
                            nodes += len(rows)
                            rows = []
                if rows:
                    write(s, q, rows)
                    nodes += len(rows)
        by_type = {}
        for sp in manifest["spaces"]:
            for f in sorted(glob.glob(os.path.join(bundle, "spaces", sp["space"], "edges", "*.parquet"))):
                for r in pq.read_table(f).to_pylist():
                    by_type.setdefault(r["edge_type"], []).append(
                        {"s": r["source_id"], "t": r["target_id"], "k": r["source_key"], "w": r["weight"]})
        for ty, rows in by_type.items():
            q = (f"UNWIND $rows AS r MATCH (a:Node) WHERE a.id = r.s MATCH (b:Node) WHERE b.id = r.t "
                 f"MERGE (a)-[e:`{ty}` {{source_key: r.k}}]->(b) SET e.weight = r.w")
            for i in range(0, len(rows), BATCH):
                write(s, q, rows[i:i + BATCH])
                rels += len(rows[i:i + BATCH])
        seconds = time.monotonic() - t0
        held = s.run("MATCH (n:Node) RETURN count(n) AS c").single()["c"]
        with_embedding = s.run(f"MATCH (n:Node) WHERE size(n.embedding) = {dim} RETURN count(n) AS c").single()["c"]
    driver.close()
    print(json.dumps({"nodes": nodes, "relationships": rels, "seconds": seconds,
                      "nodes_held": held, "nodes_with_embedding": with_embedding}))


if __name__ == "__main__":
    main()
