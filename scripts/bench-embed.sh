#!/usr/bin/env bash
# Embedding throughput, side by side in one run: the project's hashing and model2vec providers (release build of
# benches/embed-bench, which compiles src/embed/hashing.rs and src/embed/model2vec.rs as they are) against the
# Python `model2vec` package with the same model (potion-base-8M, scripts/models.sh) on the same texts.
# Prints one JSON line per implementation (texts/s, peak RSS), the agreement of the vectors, and the ratios.
#
#   scripts/bench-embed.sh [N_TEXTS]        default 1,000,000 short texts (4-14 words)
#
# Each implementation runs in its own process, so peak RSS (VmHWM) is its own. Both use every core: rayon in
# Rust, the package's own multiprocessing (joblib, above 10,000 texts) in Python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-1000000}"
CACHE="${ENGRAM_MIGRATE_CACHE:-$HOME/.cache/engram-migrate}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

MODEL="$(bash "$ROOT/scripts/models.sh" potion-base-8M | tail -1)"
PY="$(bash "$ROOT/scripts/python-env.sh" | tail -1)"
"$PY" -c 'import model2vec' 2>/dev/null || "$PY" -m pip install --quiet --disable-pip-version-check model2vec >&2

export CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-$CACHE/bench-target}"
(cd "$ROOT/benches/embed-bench" && cargo build --release --quiet >&2)
BIN="$CARGO_TARGET_DIR/release/embed-bench"

"$PY" "$ROOT/scripts/bench_embed.py" texts "$N" "$WORK/texts.txt"
echo "# $N texts, $(wc -c < "$WORK/texts.txt") bytes; $(nproc) cores; $(date -u +%FT%TZ)"
K=2000
hashing="$("$BIN" hashing "$WORK/texts.txt")"
echo "$hashing"
rust="$("$BIN" "model2vec:$MODEL" "$WORK/texts.txt" "$WORK/rust.f32" "$K")"
echo "$rust"
python="$("$PY" "$ROOT/scripts/bench_embed.py" python "$MODEL" "$WORK/texts.txt" "$WORK/python.f32" "$K")"
echo "$python"
streamed="$("$PY" "$ROOT/scripts/bench_embed.py" python "$MODEL" "$WORK/texts.txt" "$WORK/python2.f32" "$K" stream)"
echo "$streamed"
"$PY" "$ROOT/scripts/bench_embed.py" compare "$WORK/rust.f32" "$WORK/python.f32" 256
"$PY" - "$hashing" "$rust" "$python" "$streamed" <<'PY'
import json, sys
h, r, p, s = (json.loads(x) for x in sys.argv[1:])
print(json.dumps({
    "model2vec_rust_vs_python_one_call_texts_per_s": round(r["texts_per_s"] / p["texts_per_s"], 2),
    "model2vec_rust_vs_python_batches_texts_per_s": round(r["texts_per_s"] / s["texts_per_s"], 2),
    "hashing_vs_python_model2vec_batches_texts_per_s": round(h["texts_per_s"] / s["texts_per_s"], 2),
    "model2vec_rust_vs_python_one_call_peak_rss": round(r["peak_rss_mb"] / p["peak_rss_mb"], 3),
    "model2vec_rust_vs_python_batches_peak_rss": round(r["peak_rss_mb"] / s["peak_rss_mb"], 3),
}))
PY
