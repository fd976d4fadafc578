"""Helpers of scripts/bench-embed.sh.

  bench_embed.py texts N OUT              write N short texts (deterministic), one per line
  bench_embed.py python MODEL_DIR TEXTS VECTORS_OUT K [stream]
                                          embed TEXTS with the Python model2vec package; JSON line like embed-bench's;
                                          the first K vectors go to VECTORS_OUT (float32). Without `stream`, one
                                          model.encode(all texts) call (the usual use: it returns the whole matrix);
                                          with it, calls of 8192 texts whose vectors are dropped (as embed-bench does)
  bench_embed.py compare A B DIM          max |a - b| and min cosine between two float32 vector files
"""
import json, math, os, random, resource, sys, time

WORDS = """the a of to and in is for on with as by at from that this it be are was were will can not or but if
then when where which who what how all any each few more most other some such no only own same so than too very
data file table row column index query server client user account password login session token cache memory disk
network request response error warning timeout retry config setting option value key record field schema graph
node edge vector model embedding search result page report email message chat team project task issue bug fix
build test deploy release version update change start stop open close read write load save delete create insert
select parse format convert migrate backup restore sync copy move sort filter group join merge split count sum
fast slow new old big small high low first last next previous local remote public private secure safe empty full
customer order invoice payment price product item stock market share city country street house car flight train
hotel meeting calendar friday monday morning evening weather rain sun snow wind music guitar band movie book
cat dog bird fish tree flower garden river mountain ocean beach island forest coffee tea bread water dinner""".split()


def texts(n, out):
    rng = random.Random(42)
    with open(out, "w") as f:
        for i in range(n):
            k = rng.randint(4, 14)
            f.write(" ".join(rng.choice(WORDS) for _ in range(k)) + f" #{i % 1000}\n")


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def python(model_dir, path, vec_out, k, stream=False):
    import numpy as np
    import model2vec
    from model2vec import StaticModel
    with open(path) as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    t0 = time.perf_counter()
    model = StaticModel.from_pretrained(model_dir)
    load = time.perf_counter() - t0
    t1 = time.perf_counter()
    # The package's defaults otherwise (batch_size 1024, max_length 512).
    if stream:
        first = None
        for i in range(0, len(lines), 8192):
            e = model.encode(lines[i:i + 8192])
            if first is None:
                first = np.asarray(e[:k], dtype=np.float32)
        emb = first
    else:
        emb = np.asarray(model.encode(lines), dtype=np.float32)
    secs = time.perf_counter() - t1
    emb[:k].tofile(vec_out)
    print(json.dumps({
        "impl": f"python model2vec {model2vec.__version__}" + (" (batches of 8192)" if stream else " (one call)"), "texts": len(lines), "dim": int(emb.shape[1]),
        "load_s": round(load, 3), "embed_s": round(secs, 3), "texts_per_s": round(len(lines) / secs),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        # The package's worker processes (if it used any): the largest one's peak.
        "children_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "cpus": os.cpu_count(),
    }))


def compare(a, b, dim):
    import numpy as np
    x = np.fromfile(a, dtype=np.float32).reshape(-1, dim)
    y = np.fromfile(b, dtype=np.float32).reshape(-1, dim)
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    # Python's vectors are already unit length (normalize=true in config.json); compare directions.
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    print(json.dumps({"compared": n, "max_abs_diff": float(np.abs(x - y).max()), "min_cosine": float(cos.min())}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "texts":
        texts(int(sys.argv[2]), sys.argv[3])
    elif cmd == "python":
        python(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6:] == ["stream"])
    elif cmd == "compare":
        compare(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(__doc__)
