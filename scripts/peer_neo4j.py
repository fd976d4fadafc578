"""The benchmark peer of the Neo4j source (scripts/bench-neo4j.sh): the official Python driver reads the same two
queries engram-migrate streams (nodes with id, elementId, labels and properties; relationships with their ends),
with the same fetch size, and renders each record's properties as JSON text (temporal and spatial values by str()),
keeping nothing: a lower bound of what a Python extraction costs. Prints the record count as its last line.

    python peer_neo4j.py bolt://HOST:PORT/DB USER FETCH_SIZE     (password from ENGRAM_MIGRATE_SOURCE_PASSWORD
                                                                  or ARCADEDB_PASSWORD)
"""
import json
import os
import sys
from urllib.parse import urlparse

from neo4j import GraphDatabase

url, user, fetch = sys.argv[1], sys.argv[2], int(sys.argv[3])
u = urlparse(url)
db = u.path.strip("/") or None
password = os.environ.get("ENGRAM_MIGRATE_SOURCE_PASSWORD") or os.environ["ARCADEDB_PASSWORD"]
driver = GraphDatabase.driver(f"bolt://{u.hostname}:{u.port}", auth=(user, password))
queries = [
    "MATCH (n) RETURN id(n) AS id, elementId(n) AS eid, labels(n) AS names, properties(n) AS props",
    "MATCH (a)-[r]->(b) RETURN id(r) AS id, elementId(r) AS eid, [type(r)] AS names, id(a) AS sid, "
    "elementId(a) AS seid, id(b) AS tid, elementId(b) AS teid, properties(r) AS props",
]
count = 0
with driver.session(database=db, fetch_size=fetch) as s:
    for q in queries:
        for rec in s.run(q):
            props = rec["props"]
            json.dumps({k: props[k] for k in sorted(props)}, default=str)
            count += 1
driver.close()
print(count)
